"""training.evaluate and training.report on the fixture set, for every kind of source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper
from PIL import Image

from models import build_model
from training import evaluate as evaluate_module
from training import report
from training.data import list_pairs, load_mask, load_rgb
from training.evaluate import EvaluationError, evaluate, fit_centre_bias, make_predictor
from training.metrics import SaliencyMetrics, to_uint8
from training.transforms import Preprocess, preprocess_image

METRIC_KEYS = {"n_images", "mae", "max_f", "mean_f", "adaptive_f", "s_measure", "max_e", "mean_e", "adaptive_e"}
METRIC_KEYS |= {"weighted_f"}
BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


def _reference(sod_dir: Path, prob_fn) -> dict[str, float]:
    """Scores computed directly: probability map at network size → bilinear to mask size → uint8."""
    metrics = SaliencyMetrics()
    for sample in list_pairs(sod_dir / "images", sod_dir / "masks"):
        mask = load_mask(sample.mask)
        prob = torch.as_tensor(prob_fn(load_rgb(sample.image)), dtype=torch.float32)[None, None]
        prob = F.interpolate(prob, size=mask.shape, mode="bilinear", align_corners=False)
        metrics.update(to_uint8(prob[0, 0].clamp(0, 1).numpy()), mask)
    return metrics.results()


def _run_cli(capsys: pytest.CaptureFixture[str], sod_dir: Path, *source: str) -> dict:
    evaluate_module.main(
        ["--images", str(sod_dir / "images"), "--masks", str(sod_dir / "masks"), "--no-progress", *source]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1  # one JSON object, nothing else on stdout
    return json.loads(out[0])


def test_predictions_matched_by_stem_any_extension_and_resized(
    sod_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for i, mask_path in enumerate(sorted((sod_dir / "masks").glob("*.png"))):
        mask = Image.open(mask_path).convert("L")
        # half of them at half size (resized back by the evaluation), in two lossless formats
        if i % 2:
            mask = mask.resize((mask.width // 2, mask.height // 2), Image.BILINEAR)
        mask.save(tmp_path / f"{mask_path.stem}.{'bmp' if i % 3 else 'png'}")
    result = _run_cli(capsys, sod_dir, "--predictions", str(tmp_path))
    assert set(result) >= METRIC_KEYS and result["n_images"] == 16
    assert result["evaluated"] == {"kind": "predictions", "path": str(tmp_path)}
    assert 0.9 < result["max_f"] < 1.0 and result["mae"] < 0.05  # near perfect, not exact (resampled halves)
    (tmp_path / "ecssd_0002.bmp").unlink(missing_ok=True)
    (tmp_path / "ecssd_0002.png").unlink(missing_ok=True)
    with pytest.raises(EvaluationError, match=r"no prediction in .* for: ecssd_0002"):
        evaluate(make_predictor(predictions=str(tmp_path)), list_pairs(sod_dir / "images", sod_dir / "masks"))


def test_exact_masks_as_predictions_score_perfectly(sod_dir: Path, tmp_path: Path) -> None:
    for mask_path in (sod_dir / "masks").glob("*.png"):
        Image.fromarray(load_mask(mask_path).astype(np.uint8) * 255).save(tmp_path / f"{mask_path.stem}.png")
    results, _ = evaluate(make_predictor(predictions=str(tmp_path)), list_pairs(sod_dir / "images", sod_dir / "masks"))
    assert results["max_f"] == pytest.approx(1.0) and results["mae"] == 0.0
    assert results["s_measure"] == pytest.approx(1.0)


def _write_bundle(folder: Path, size: int = 32) -> None:
    """A real ONNX graph: saliency = sigmoid(mean over channels of the normalized image)."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[1], keepdims=1),
            helper.make_node("Sigmoid", ["mean"], ["saliency"]),
        ],
        "mean_sigmoid",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("saliency", TensorProto.FLOAT, ["batch", 1, size, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True)
    onnx.save(model, folder / "model.onnx")
    manifest = {
        "name": "meansig",
        "preprocess": {"input_size": size, "resize": "stretch", "mean": [0.4, 0.4, 0.4], "std": [0.2, 0.2, 0.2]},
        "input_name": "image",
        "outputs": [{"name": "saliency", "kind": "saliency", "shape": ["batch", 1, size, size]}],
        "variants": {"fp32": {"file": "model.onnx"}},
        "default_variant": "fp32",
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_bundle_runs_the_onnx_graph_and_resolves_names(
    sod_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_bundle(tmp_path / "bundles" / "meansig")
    pre = Preprocess(32, "stretch", (0.4, 0.4, 0.4), (0.2, 0.2, 0.2))
    expected = _reference(sod_dir, lambda img: torch.sigmoid(preprocess_image(img, pre).mean(0)).numpy())
    monkeypatch.setattr(evaluate_module, "BUNDLES_DIR", tmp_path / "bundles")
    result = _run_cli(capsys, sod_dir, "--bundle", "meansig")  # a bare name under <repo>/bundles
    assert result["evaluated"]["kind"] == "bundle" and result["evaluated"]["variant"] == "fp32"
    for key in METRIC_KEYS - {"n_images"}:
        assert result[key] == pytest.approx(expected[key], abs=2e-6), key
    with pytest.raises(EvaluationError, match="no variant 'int8'"):
        make_predictor(bundle=str(tmp_path / "bundles" / "meansig"), variant="int8")
    with pytest.raises(EvaluationError, match="no bundle 'absent'"):
        make_predictor(bundle="absent")


def test_checkpoint_is_rebuilt_with_its_preprocessing(sod_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("attnbaseline_sigmoid_lite", input_size=64).eval()
    pre = Preprocess(input_size=64)
    checkpoint = {
        "model": model.state_dict(),
        "model_name": "attnbaseline_sigmoid_lite",
        "model_kwargs": {"input_size": 64},
        "config": {"preprocess": pre.to_dict()},
        "epoch": 2,
    }
    torch.save(checkpoint, tmp_path / "best.pt")
    with torch.no_grad():
        expected = _reference(
            sod_dir, lambda img: torch.sigmoid(model(preprocess_image(img, pre)[None]).final)[0, 0].numpy()
        )
    predictor = make_predictor(checkpoint=str(tmp_path / "best.pt"))
    results, _ = evaluate(predictor, list_pairs(sod_dir / "images", sod_dir / "masks"), progress=False)
    assert predictor.description["epoch"] == 3
    for key in METRIC_KEYS - {"n_images"}:
        assert results[key] == pytest.approx(expected[key], abs=1e-6), key
    torch.save({"weights": {}}, tmp_path / "other.pt")
    with pytest.raises(EvaluationError, match="not a training checkpoint"):
        make_predictor(checkpoint=str(tmp_path / "other.pt"))


def test_attention_maps_are_scored_against_fixations(
    sod_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(1)
    model = build_model("attnbaseline_sigmoid_lite", input_size=64).eval()
    for module in model.attention:
        torch.nn.init.normal_(module.score[-1].weight, std=0.5)  # zero at init: a uniform map has nothing to score
    pre = Preprocess(input_size=64)
    state = {"model_name": "attnbaseline_sigmoid_lite", "model_kwargs": {"input_size": 64}, "epoch": 0}
    torch.save({**state, "model": model.state_dict(), "config": {"preprocess": pre.to_dict()}}, tmp_path / "m.pt")
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")
    fixations = sod_dir / "fixations.csv"
    predictor = make_predictor(checkpoint=str(tmp_path / "m.pt"), attention="spatial/d1")
    with_attention, _ = evaluate(predictor, samples, fixations, progress=False)
    on_saliency, _ = evaluate(make_predictor(checkpoint=str(tmp_path / "m.pt")), samples, fixations, progress=False)
    on_attention = with_attention["attention"]["spatial/d1"]
    # The same maps written as 8-bit images and scored as predictions: equal up to the quantization.
    maps = tmp_path / "maps"
    maps.mkdir()
    with torch.no_grad():
        for sample in samples:
            image = load_rgb(sample.image)
            weights = model(preprocess_image(image, pre)[None]).attention["spatial/d1"]
            size = (image.height, image.width)
            gaze = F.interpolate(weights, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
            Image.fromarray(to_uint8(gaze / gaze.max())).save(maps / f"{sample.stem}.png")
    on_disk, _ = evaluate(make_predictor(predictions=str(maps)), samples, fixations, progress=False)
    for key in ("nss", "cc", "kl", "shuffled_auc", "information_gain"):
        assert on_attention[key] == pytest.approx(on_disk[key], abs=0.02), key
        assert with_attention[key] == on_saliency[key], key  # the saliency map's own gaze metrics stay beside
    assert on_attention["nss"] != pytest.approx(on_saliency["nss"], abs=1e-3)
    for key in METRIC_KEYS:  # the SOD metrics still score the saliency map
        assert with_attention[key] == on_saliency[key], key
    every = make_predictor(checkpoint=str(tmp_path / "m.pt"), attention="all")
    assert set(evaluate(every, samples, fixations, progress=False)[0]["attention"]) == set(model_keys(model))
    # Eye-tracking sets have no masks: only the gaze metrics, the same as with masks.
    no_masks, _ = evaluate(predictor, list_pairs(sod_dir / "images", None), fixations, progress=False)
    assert "max_f" not in no_masks and no_masks["attention"]["spatial/d1"] == on_attention
    assert no_masks["shuffled_auc"] == with_attention["shuffled_auc"]
    # The information-gain baseline fitted on other images' fixations, never on the evaluated ones.
    split = tmp_path / "fit.txt"
    split.write_text("pascals_2\npascals_4\npascals_5\n")
    rest = [s for s in samples if s.stem not in {"pascals_2", "pascals_4", "pascals_5"}]
    bias = fit_centre_bias(fixations, sod_dir / "images", split, rest)
    fitted, _ = evaluate(predictor, rest, fixations, progress=False, centre_bias=bias)
    assert fitted["ig_baseline"].startswith("centre_bias fitted on") and "3 training images" in fitted["ig_baseline"]
    assert fitted["attention"]["spatial/d1"]["ig_baseline"] == fitted["ig_baseline"]
    with pytest.raises(EvaluationError, match="lists evaluated images"):
        fit_centre_bias(fixations, sod_dir / "images", split, samples)
    with pytest.raises(EvaluationError, match="nothing to score"):
        evaluate(predictor, list_pairs(sod_dir / "images", None), None, progress=False)
    with pytest.raises(EvaluationError, match="no attention map 'spatial/d9'"):
        make_predictor(checkpoint=str(tmp_path / "m.pt"), attention="spatial/d9")
    with pytest.raises(EvaluationError, match="applies to --bundle and --checkpoint only"):
        make_predictor(baseline="centre_prior", attention="spatial/d1")
    with pytest.raises(SystemExit):
        _run_cli(capsys, sod_dir, "--checkpoint", str(tmp_path / "m.pt"), "--attention", "spatial/d1")
    assert "give --fixations too" in capsys.readouterr().err


def model_keys(model: torch.nn.Module) -> list[str]:
    return [g.name for g in model.attention_geometry()]


@pytest.mark.skipif(not (BUNDLES / "default" / "manifest.json").is_file(), reason="no committed default bundle")
def test_every_attention_output_of_a_bundle_is_scored_on_gaze(sod_dir: Path) -> None:
    manifest = json.loads((BUNDLES / "default" / "manifest.json").read_text())
    attention = [o["name"] for o in manifest["outputs"] if o.get("attention")]
    samples = list_pairs(sod_dir / "images", None)
    results, _ = evaluate(make_predictor(bundle="default", attention="all"), samples, sod_dir / "fixations.csv", False)
    assert list(results["attention"]) == attention
    for metrics in results["attention"].values():
        assert 0.0 <= metrics["shuffled_auc"] <= 1.0 and np.isfinite(metrics["information_gain"])
    with pytest.raises(EvaluationError, match="no attention map 'attn_nowhere'"):
        make_predictor(bundle="default", attention="attn_nowhere")


def test_baselines_and_fixations_through_the_cli(sod_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _run_cli(capsys, sod_dir, "--baseline", "centre_prior", "--fixations", str(sod_dir / "fixations.csv"))
    assert result["evaluated"] == {"kind": "baseline", "name": "centre_prior"}
    assert result["n_fixation_images"] == 8 and result["ig_baseline"] == "centre_prior"
    assert abs(result["information_gain"]) < 1e-3  # the centre prior against itself (up to uint8 quantization)
    with pytest.raises(SystemExit):
        evaluate_module.main(["--images", str(sod_dir / "images"), "--masks", str(sod_dir / "masks")])
    assert "exactly one of" in capsys.readouterr().err


def test_report_writes_curves_and_table(sod_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = f"fx={sod_dir / 'images'}:{sod_dir / 'masks'}"
    runs = ["centre=baseline:centre_prior", "sr=baseline:spectral_residual"]
    report.main(["--runs", *runs, "--datasets", dataset, "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    table = (tmp_path / "results.md").read_text()
    assert "| fx | centre | 16 |" in table and "| fx | sr | 16 |" in table
    for name in ("pr_fx.png", "f_fx.png"):
        with Image.open(tmp_path / name) as img:
            assert img.size[0] > 300
    assert printed["results"]["fx"]["centre"]["n_images"] == 16
    with pytest.raises(SystemExit):
        report.main(["--runs", "bad", "--datasets", dataset, "--out", str(tmp_path)])


def test_worst_images_by_mae_are_listed_with_their_share(sod_dir: Path, tmp_path: Path) -> None:
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")
    for sample in samples:
        Image.fromarray(load_mask(sample.mask).astype(np.uint8) * 255).save(tmp_path / f"{sample.stem}.png")
    broken = samples[3].stem
    inverted = ~load_mask(samples[3].mask)
    Image.fromarray(inverted.astype(np.uint8) * 255).save(tmp_path / f"{broken}.png")
    results, _ = evaluate(make_predictor(predictions=str(tmp_path)), samples, worst=2)
    worst = results["worst_by_mae"]
    assert worst[0] == {"stem": broken, "mae": 1.0} and worst[1]["mae"] == 0.0  # the only wrong map, then a perfect one
    assert results["worst_share_of_mae"] == 1.0
    assert results["mae"] == pytest.approx(1.0 / len(samples))
    assert "worst_by_mae" not in evaluate(make_predictor(predictions=str(tmp_path)), samples)[0]
