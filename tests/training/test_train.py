"""The trainer on the fixture set: the loss falls, and an interrupted + resumed run equals an uninterrupted one."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from training.config import ConfigError, DatasetSpec, TrainConfig
from training.train import append_log_row, build_dataset, cpu_lacks_native_bf16, learning_rate_factor, train
from training.train import main as train_main
from training.transforms import EvalTransform, Preprocess


def _config(sod_dir: Path, out: Path, **overrides) -> TrainConfig:
    """attnbaseline_sigmoid_lite at 64 px on the 16 fixture pairs, fixation-supervised (exercises every path)."""
    raw = {
        "name": "tiny",
        "model": "attnbaseline_sigmoid_lite",
        "model_kwargs": {"input_size": 64},
        "preprocess": {"input_size": 64},
        "data": {
            "root": str(sod_dir),
            "train": [{"images": "images", "masks": "masks", "fixations": "fixations.csv"}],
            "val": {"images": "images", "masks": "masks"},
            "augment": {"rotate": 5, "jitter": 0.2},
        },
        "loss": {"kind": "attention_baseline", "params": {"kl_weight": 0.01}},
        "optim": {"kind": "adamw", "lr": 0.003, "weight_decay": 0.0001},
        "schedule": {"kind": "cosine", "epochs": 2, "warmup_epochs": 0.5},
        "run": {"batch_size": 4, "num_workers": 0, "seed": 3, "threads": 1, "max_steps_per_epoch": 3},
        "out_dir": str(out),
    }
    for key, value in overrides.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) else value
    return TrainConfig.from_dict(raw)


def _log(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_loss_falls_on_fixtures(sod_dir: Path, tmp_path: Path) -> None:
    # No augmentation and a constant rate, so falling loss shows learning rather than schedule effects.
    cfg = _config(
        sod_dir,
        tmp_path,
        data={"augment": {"scale": [1.0, 1.0], "ratio": [1.0, 1.0], "rotate": 0, "jitter": 0, "grey_p": 0}},
        schedule={"kind": "constant", "epochs": 6, "warmup_epochs": 0},
        run={"max_steps_per_epoch": 4},
    )
    summary = train(cfg)
    rows = _log(tmp_path)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    losses = [float(r["train_loss"]) for r in rows]
    assert losses[-1] < 0.8 * losses[0], losses
    assert all("train_kl" in r for r in rows)  # the fixation term was computed
    best = torch.load(tmp_path / "best.pt", map_location="cpu", weights_only=False)
    assert best["epoch"] + 1 == summary["best"]["epoch"]
    assert {"model", "model_name", "model_kwargs", "config", "epoch", "best"} <= set(best)
    assert best["config"]["preprocess"]["input_size"] == 64


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_equals_uninterrupted_run(sod_dir: Path, tmp_path: Path) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(_config(sod_dir, straight))
    # --max-minutes 0 stops cleanly after the first epoch of the same 2-epoch schedule
    summary = train(_config(sod_dir, interrupted), max_minutes=0)
    assert summary["stopped_after_epoch"] == 1 and _state(interrupted / "last.pt")["epoch"] == 0
    train_main(["--config", str(_write_yaml(sod_dir, interrupted, tmp_path)), "--resume"])
    a, b = _state(straight / "last.pt"), _state(interrupted / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        for key in pa:
            assert torch.equal(pa[key], pb[key]), key
    assert a["best"] == b["best"]
    assert [r["train_loss"] for r in _log(straight)] == [r["train_loss"] for r in _log(interrupted)]


def _write_yaml(sod_dir: Path, out: Path, folder: Path) -> Path:
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(_config(sod_dir, out).to_dict()))
    return path


def test_unknown_loss_kind_is_refused(sod_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown loss kind"):
        train(_config(sod_dir, tmp_path, loss={"kind": "nope"}))


def test_pretrained_weights_on_an_encoder_without_them_is_refused(sod_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no encoder that loads torchvision weights"):
        train(_config(sod_dir, tmp_path, pretrained=str(tmp_path / "vgg16.pth")))


def test_log_keeps_an_existing_header(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    append_log_row(log, {"epoch": 1, "val_max_f": 0.5})
    append_log_row(log, {"epoch": 2, "val_max_f": 0.6, "val_s_measure": 0.7})  # a newer version logs more
    assert log.read_text().splitlines() == ["epoch,val_max_f", "1,0.5", "2,0.6"]


def test_init_from_starts_a_second_stage_from_the_first_stages_weights(sod_dir: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    train(_config(sod_dir, first, schedule={"epochs": 1}))
    cfg = _config(sod_dir, second, init_from=str(first / "best.pt"), optim={"lr": 0.0})
    train(cfg, max_minutes=0)
    start, after = _state(first / "best.pt")["model"], _state(second / "last.pt")["model"]
    conv_weights = [k for k in start if k.endswith("weight") and start[k].dim() == 4]
    for key in conv_weights:  # lr 0: only BatchNorm running statistics may have moved
        assert torch.equal(start[key], after[key]), key
    assert _state(second / "last.pt")["config"]["init_from"] == str(first / "best.pt")


def test_init_from_refuses_a_missing_file_or_another_model(sod_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="init_from checkpoint not found"):
        train(_config(sod_dir, tmp_path / "a", init_from=str(tmp_path / "nope.pt")))
    train(_config(sod_dir, tmp_path / "first", schedule={"epochs": 1}))
    other = _config(
        sod_dir, tmp_path / "b", model="attnbaseline_softmax_lite", init_from=str(tmp_path / "first/best.pt")
    )
    with pytest.raises(ConfigError, match="holds 'attnbaseline_sigmoid_lite'"):
        train(other)


def test_warmup_rises_linearly_to_the_base_rate_and_never_above() -> None:
    cfg = TrainConfig.from_dict(
        {"name": "t", "model": "m", "schedule": {"kind": "cosine", "epochs": 40, "warmup_epochs": 1}}
    )
    warm = 1 / 40
    factors = [learning_rate_factor(cfg, warm * i / 100) for i in range(101)]
    assert factors[0] == pytest.approx(1e-3) and factors[50] == pytest.approx(0.5)
    assert max(factors) <= 1.0 and factors == sorted(factors)
    assert learning_rate_factor(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)


def test_human_attention_trains_and_evaluates_on_each_images_fixation_map(sod_dir: Path, tmp_path: Path) -> None:
    from training.data import list_pairs, load_rgb
    from training.evaluate import CheckpointPredictor, EvaluationError

    human = {"model_kwargs": {"input_size": 64, "mode": "replace"}}
    with pytest.raises(ConfigError, match="mode=replace"):  # a validation set has no fixations to feed it
        train(_config(sod_dir, tmp_path / "with_val", **human))
    cfg = _config(sod_dir, tmp_path / "run", data={"val": None}, schedule={"epochs": 1}, **human)
    train(cfg)
    with pytest.raises(EvaluationError, match="give --fixations"):
        CheckpointPredictor(tmp_path / "run" / "best.pt")
    predictor = CheckpointPredictor(tmp_path / "run" / "best.pt", fixations_csv=sod_dir / "fixations.csv")
    sample = next(s for s in list_pairs(sod_dir / "images", sod_dir / "masks") if s.stem in predictor.human_fixations)
    image = load_rgb(sample.image)
    prediction = predictor(sample, image, (image.size[1], image.size[0]))
    assert prediction.shape == (image.size[1], image.size[0]) and prediction.dtype == np.uint8


def test_picanet_trains_with_its_gaze_term_on_an_oversampled_fixation_set(sod_dir: Path, tmp_path: Path) -> None:
    cfg = _config(
        sod_dir,
        tmp_path,
        model="picanet_effl0",
        loss={"kind": "picanet", "params": {"side_weights": [1.0] * 5, "fixation_weight": 1.0}},
        schedule={"epochs": 1},
        run={"max_steps_per_epoch": 2},
    )
    cfg.data.train[0].repeat = 3
    summary = train(cfg)
    assert summary["best"]["epoch"] == 1
    assert float(_log(tmp_path)[0]["train_gaze_kl"]) > 0


def test_repeat_lists_a_set_that_many_times_and_must_be_a_positive_whole_number(sod_dir: Path) -> None:
    spec = DatasetSpec(images="images", masks="masks", repeat=3)
    once = build_dataset([DatasetSpec(images="images", masks="masks")], sod_dir, EvalTransform(Preprocess(64)))
    thrice = build_dataset([spec], sod_dir, EvalTransform(Preprocess(64)))
    assert len(thrice) == 3 * len(once) and thrice.samples == once.samples * 3
    for bad in (0, 1.5):
        with pytest.raises(ConfigError, match="repeat must be"):
            DatasetSpec(images="images", masks="masks", repeat=bad)


def test_bf16_counts_as_emulated_only_on_a_cpu_whose_flags_lack_bfloat16_instructions() -> None:
    epyc_avx2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
    epyc_genoa = "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16\n"
    sapphire_rapids = "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n"
    assert cpu_lacks_native_bf16(epyc_avx2)
    assert not cpu_lacks_native_bf16(epyc_genoa) and not cpu_lacks_native_bf16(sapphire_rapids)
    assert not cpu_lacks_native_bf16("Processor\t: AArch64\nFeatures\t: fp asimd bf16\n")  # no x86 flags: no claim
