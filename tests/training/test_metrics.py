"""Every SOD metric agrees with PySODMetrics (the oracle; test-only dependency) to 1e-4."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import py_sod_metrics
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from training.metrics import SaliencyMetrics, to_uint8

TOLERANCE = 1e-4


def _oracle(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Fmeasure's deprecation notice
        fm = py_sod_metrics.Fmeasure()
    mae, sm, em = py_sod_metrics.MAE(), py_sod_metrics.Smeasure(), py_sod_metrics.Emeasure()
    wfm = py_sod_metrics.WeightedFmeasure()
    for pred, gt in pairs:
        gt_u8 = gt.astype(np.uint8) * 255
        for metric in (fm, mae, sm, em, wfm):
            metric.step(pred=pred, gt=gt_u8)
    f, e = fm.get_results(), em.get_results()
    return {
        "mae": mae.get_results()["mae"],
        "max_f": f["fm"]["curve"].max(),
        "mean_f": f["fm"]["curve"].mean(),
        "adaptive_f": f["fm"]["adp"],
        "s_measure": sm.get_results()["sm"],
        "max_e": e["em"]["curve"].max(),
        "mean_e": e["em"]["curve"].mean(),
        "adaptive_e": e["em"]["adp"],
        "weighted_f": wfm.get_results()["wfm"],
        "precision": f["pr"]["p"],
        "recall": f["pr"]["r"],
    }


def _ours(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    metrics = SaliencyMetrics()
    for pred, gt in pairs:
        metrics.update(pred, gt)
    return metrics.results(), metrics.curves()


def _synthetic_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    h, w = 40, 56
    yy, xx = np.mgrid[:h, :w]
    blob = ((yy - 18) ** 2 / 120 + (xx - 30) ** 2 / 260) < 1
    soft = to_uint8(np.clip(gaussian_filter(blob.astype(float), 3) + rng.normal(0, 0.05, blob.shape), 0, 1))
    empty, full = np.zeros((h, w), bool), np.ones((h, w), bool)
    return {
        "empty_mask_random_pred": (rng.integers(0, 256, (h, w), dtype=np.uint8), empty),
        "empty_mask_zero_pred": (np.zeros((h, w), np.uint8), empty),
        "empty_mask_full_pred": (np.full((h, w), 255, np.uint8), empty),
        "full_mask_soft_pred": (soft, full),
        "full_mask_full_pred": (np.full((h, w), 255, np.uint8), full),
        "full_mask_zero_pred": (np.zeros((h, w), np.uint8), full),
        "const_zero": (np.zeros((h, w), np.uint8), blob),
        "const_255": (np.full((h, w), 255, np.uint8), blob),
        "const_mid": (np.full((h, w), 128, np.uint8), blob),
        "random": (rng.integers(0, 256, (h, w), dtype=np.uint8), rng.random((h, w)) > 0.7),
        "realistic_soft": (soft, blob),
        "perfect": (blob.astype(np.uint8) * 255, blob),
        "inverted": ((~blob).astype(np.uint8) * 255, blob),
        "single_fg_pixel": (soft, (yy == 5) & (xx == 7)),
        "tiny_image": (rng.integers(0, 256, (3, 2), dtype=np.uint8), np.array([[1, 0], [0, 0], [1, 1]], bool)),
    }


def _assert_close(ours: dict[str, float], oracle: dict[str, float], label: str) -> None:
    for key in ("mae", "max_f", "mean_f", "adaptive_f", "s_measure", "max_e", "mean_e", "adaptive_e", "weighted_f"):
        assert ours[key] == pytest.approx(float(oracle[key]), abs=TOLERANCE), f"{label}: {key}"


@pytest.mark.parametrize("case", sorted(_synthetic_cases()))
def test_each_metric_matches_pysodmetrics_per_case(case: str) -> None:
    pairs = [_synthetic_cases()[case]]
    ours, _ = _ours(pairs)
    assert ours["n_images"] == 1
    _assert_close(ours, _oracle(pairs), case)


def test_dataset_means_and_pr_curves_match_on_fixture_maps(sod_dir: Path) -> None:
    # Realistic predictions: each fixture mask blurred and shifted, with noise, plus all synthetic cases.
    rng = np.random.default_rng(1)
    pairs = []
    for mask_path in sorted((sod_dir / "masks").glob("*.png")):
        gt = np.asarray(Image.open(mask_path).convert("L")) >= 128
        pred = gaussian_filter(np.roll(gt.astype(float), 3, axis=1), 2.5) + rng.normal(0, 0.08, gt.shape)
        pairs.append((to_uint8(np.clip(pred, 0, 1)), gt))
    pairs += list(_synthetic_cases().values())
    ours, curves = _ours(pairs)
    oracle = _oracle(pairs)
    assert ours["n_images"] == len(pairs)
    _assert_close(ours, oracle, "dataset")
    np.testing.assert_allclose(curves["precision"], oracle["precision"], atol=TOLERANCE)
    np.testing.assert_allclose(curves["recall"], oracle["recall"], atol=TOLERANCE)


def test_perfect_prediction_scores_one_and_rejects_bad_input() -> None:
    gt = np.zeros((20, 20), bool)
    gt[5:15, 4:12] = True
    ours, _ = _ours([(gt.astype(np.uint8) * 255, gt)])
    for key in ("max_f", "adaptive_f", "s_measure", "weighted_f"):
        assert ours[key] == pytest.approx(1.0, abs=1e-6), key
    # The reference E-measure divides the alignment sum by (H·W − 1), so a perfect map scores H·W / (H·W − 1).
    for key in ("max_e", "adaptive_e"):
        assert ours[key] == pytest.approx(400 / 399, abs=1e-9), key
    assert ours["mae"] == 0.0
    metrics = SaliencyMetrics()
    with pytest.raises(ValueError, match="differ in size"):
        metrics.update(np.zeros((3, 3), np.uint8), np.zeros((3, 4), bool))
    with pytest.raises(TypeError, match="uint8"):
        metrics.update(np.zeros((3, 3), np.float32), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="no images"):
        metrics.results()
