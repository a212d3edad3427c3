"""FGSM robustness: the step stays within ε grey levels and the pixel range, raises the loss, and ε = 0 scores as
``training.evaluate`` does."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from training import robustness as robustness_module
from training.data import list_pairs, load_mask, load_rgb
from training.evaluate import EvaluationError, evaluate, make_predictor
from training.robustness import fgsm, pixel_bounds, robustness
from training.transforms import Preprocess, preprocess_image

torch.set_num_threads(1)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = build_model("attnbaseline_sigmoid_lite", input_size=64).eval()
    state = {"model_name": "attnbaseline_sigmoid_lite", "model_kwargs": {"input_size": 64}, "epoch": 0}
    config = {"preprocess": Preprocess(input_size=64).to_dict()}
    torch.save({**state, "model": model.state_dict(), "config": config}, tmp_path / "m.pt")
    return tmp_path / "m.pt"


def test_fgsm_moves_each_pixel_by_at_most_eps_and_raises_the_loss(sod_dir: Path) -> None:
    torch.manual_seed(0)
    model = build_model("attnbaseline_sigmoid_lite", input_size=64).eval()
    pre = Preprocess(input_size=64)
    sample = list_pairs(sod_dir / "images", sod_dir / "masks")[0]
    x = preprocess_image(load_rgb(sample.image), pre)[None]
    mask = torch.from_numpy(load_mask(sample.mask).astype("float32"))[None, None]
    low, high, step = pixel_bounds(pre)
    attacked = fgsm(lambda batch: model(batch).final, x, mask, 4.0, pre)
    assert torch.all((attacked - x).abs() <= 4.0 * step + 1e-6)
    assert torch.all(attacked >= low - 1e-6) and torch.all(attacked <= high + 1e-6)

    def loss(batch: torch.Tensor) -> float:
        with torch.no_grad():
            logits = model(batch).final
        target = F.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False)
        return float(F.binary_cross_entropy_with_logits(logits, target))

    assert loss(attacked) > loss(x)  # the step goes up the loss: that is the attack


def test_clean_scores_match_evaluate_and_drops_are_relative_to_them(sod_dir: Path, checkpoint: Path) -> None:
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")[:4]
    result = robustness(checkpoint, samples, [2.0, 8.0], progress=False)
    reference, _ = evaluate(make_predictor(checkpoint=str(checkpoint)), samples, progress=False)
    assert result["clean"] == {"max_f": reference["max_f"], "mae": reference["mae"]}
    assert [a["eps"] for a in result["fgsm"]] == [2.0, 8.0] and result["n_images"] == 4
    for attack in result["fgsm"]:
        assert attack["max_f_drop"] == pytest.approx(result["clean"]["max_f"] - attack["max_f"])
        assert attack["mae_rise"] == pytest.approx(attack["mae"] - result["clean"]["mae"])


def test_cli_prints_json_and_refuses_bad_eps(
    sod_dir: Path, checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--checkpoint", str(checkpoint), "--images", str(sod_dir / "images"), "--masks", str(sod_dir / "masks")]
    robustness_module.main([*args, "--eps", "4", "--no-progress", "--threads", "1"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["fgsm"][0]["eps"] == 4.0 and printed["n_images"] == 16
    for bad in ("0", "300", "two"):
        with pytest.raises(SystemExit):
            robustness_module.main([*args, "--eps", bad])
        assert "--eps" in capsys.readouterr().err


def test_human_map_model_is_attacked_through_its_pixels_with_the_fixations_held(sod_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("attnbaseline_sigmoid_lite", mode="replace", input_size=64).eval()
    state = {"model_name": "attnbaseline_sigmoid_lite", "model_kwargs": {"mode": "replace", "input_size": 64}}
    config = {"preprocess": Preprocess(input_size=64).to_dict()}
    torch.save({**state, "epoch": 0, "model": model.state_dict(), "config": config}, tmp_path / "human.pt")
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")[:3]
    fixations = tmp_path / "fixations.csv"
    fixations.write_text("stem,x,y\n" + "".join(f"{s.stem},{5 + i},{7 + i}\n" for i, s in enumerate(samples)))
    with pytest.raises(EvaluationError, match="give --fixations"):
        robustness(tmp_path / "human.pt", samples, [4.0], progress=False)
    result = robustness(tmp_path / "human.pt", samples, [4.0], progress=False, fixations_csv=fixations)
    predictor = make_predictor(checkpoint=str(tmp_path / "human.pt"), fixations_csv=fixations)
    reference, _ = evaluate(predictor, samples, progress=False)
    assert result["clean"] == {"max_f": reference["max_f"], "mae": reference["mae"]}
    assert result["fgsm"][0]["mae"] != result["clean"]["mae"]  # the gradient reached the pixels through the map
