"""Salient-object-detection metrics following the standard evaluation (PySODMetrics definitions)."""

from __future__ import annotations

import numpy as np

BETA2 = 0.3
EPS = np.spacing(1)


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """A probability map in [0,1] → the uint8 map a PNG would store (what every evaluation reads)."""
    return np.clip(np.round(prob * 255.0), 0, 255).astype(np.uint8)


def _prepare(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 prediction → [0,1] float, min-max normalized when not constant; gt → bool."""
    gt = gt > 128 if gt.dtype == np.uint8 else gt.astype(bool)
    pred = pred.astype(np.float64) / 255.0
    lo, hi = pred.min(), pred.max()
    if hi != lo:
        pred = (pred - lo) / (hi - lo)
    return pred, gt


def f_measure_curve(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F_beta at 256 thresholds (255 → 0) for one uint8 prediction."""
    pred, gt = _prepare(pred, gt)
    quantized = (pred * 255).astype(np.uint8)
    bins = np.linspace(0, 256, 257)
    fg_hist, _ = np.histogram(quantized[gt], bins=bins)
    bg_hist, _ = np.histogram(quantized[~gt], bins=bins)
    tp = np.cumsum(np.flip(fg_hist))
    fp = np.cumsum(np.flip(bg_hist))
    predicted = tp + fp
    predicted[predicted == 0] = 1
    positives = max(np.count_nonzero(gt), 1)
    precision = tp / predicted
    recall = tp / positives
    num = (1 + BETA2) * precision * recall
    den = BETA2 * precision + recall
    f = np.where(den == 0, 0.0, num / np.where(den == 0, 1, den))
    return precision, recall, f


def mae(pred: np.ndarray, gt: np.ndarray) -> float:
    pred, gt = _prepare(pred, gt)
    return float(np.mean(np.abs(pred - gt)))


class SaliencyMetrics:
    """Accumulates per-image results; ``results()`` returns dataset-level numbers.

    Feed uint8 predictions (see :func:`to_uint8`) at the ground truth's size.
    """

    def __init__(self) -> None:
        self._f: list[np.ndarray] = []
        self._mae: list[float] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        if pred.dtype != np.uint8:
            raise TypeError("predictions must be uint8 maps (use to_uint8)")
        self._f.append(f_measure_curve(pred, gt)[2])
        self._mae.append(mae(pred, gt))

    def results(self) -> dict[str, float]:
        curve = np.mean(self._f, axis=0)
        return {
            "n_images": len(self._mae),
            "mae": float(np.mean(self._mae)),
            "max_f": float(curve.max()),
            "mean_f": float(curve.mean()),
        }
