"""The saliency floor: the transform by hand, and the fitting command's floor-0 row against ``training.evaluate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data import list_pairs
from training.evaluate import evaluate, make_predictor
from training.fit_saliency_floor import apply_floor, main


def test_the_floor_zeroes_what_lies_below_it_and_stretches_the_rest_in_order() -> None:
    p = np.asarray([0.0, 0.1, 0.2, 0.6, 1.0], np.float32)
    np.testing.assert_allclose(apply_floor(p, 0.2), [0.0, 0.0, 0.0, 0.5, 1.0], atol=1e-7)
    np.testing.assert_array_equal(apply_floor(p, 0.0), p)


def test_the_floor_zero_row_is_what_evaluate_reports(sod_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--images", str(sod_dir / "images"), "--masks", str(sod_dir / "masks"), "--count", "0"]
    assert main([*args, "--floors", "0", "0.2", "--threads", "1", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    samples = list_pairs(sod_dir / "images", sod_dir / "masks")
    reference, _ = evaluate(make_predictor(bundle="default", threads=1), samples, progress=False)
    assert result["images"] == len(samples)
    assert result["floors"]["0.0"]["mae"] == pytest.approx(reference["mae"], abs=1e-5)
    assert result["floors"]["0.0"]["max_f"] == pytest.approx(reference["max_f"], abs=1e-5)
    assert result["best_floor"] in (0.0, 0.2)
