"""Salient-object-detection metrics, following the standard evaluation exactly (PySODMetrics definitions).

Every metric reads a uint8 prediction (what a saved PNG holds) and a boolean mask of the same size. As in the
MATLAB toolboxes the prediction is scaled to [0, 1] and min-max normalized unless constant.

- F-measure (Achanta et al., CVPR 2009) with β² = 0.3 at 256 thresholds (255 → 0): ``max_f`` and ``mean_f`` read
  the dataset-mean F curve; ``adaptive_f`` thresholds each map at ``min(2·mean, 1)``.
- MAE (Perazzi et al., CVPR 2012).
- S-measure (Fan et al., ICCV 2017), α = 0.5.
- E-measure (Fan et al., IJCAI 2018): curve over 256 thresholds (``max_e``, ``mean_e``) and adaptive.
- Weighted F-measure (Margolin et al., CVPR 2014) with the original's β² = 1.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import convolve, distance_transform_edt

BETA2 = 0.3
WEIGHTED_F_BETA2 = 1.0
S_ALPHA = 0.5
EPS = np.spacing(1)
N_THRESHOLDS = 256


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """A probability map in [0,1] → the uint8 map a PNG would store (what every evaluation reads)."""
    return np.clip(np.round(prob * 255.0), 0, 255).astype(np.uint8)


def normalize_prediction(pred: np.ndarray) -> np.ndarray:
    """uint8 prediction → float64 in [0,1], min-max normalized when not constant (MATLAB ``mapminmax``)."""
    pred = pred.astype(np.float64) / 255.0
    lo, hi = pred.min(), pred.max()
    if hi != lo:
        pred = (pred - lo) / (hi - lo)
    return pred


def adaptive_threshold(pred: np.ndarray) -> float:
    """Twice the mean saliency, capped at 1."""
    return min(2.0 * float(pred.mean()), 1.0)


def _threshold_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and background pixel counts with quantized value ≥ t, for t = 255, 254, …, 0."""
    quantized = (pred * 255).astype(np.uint8)
    fg_hist = np.bincount(quantized[gt], minlength=N_THRESHOLDS)
    bg_hist = np.bincount(quantized[~gt], minlength=N_THRESHOLDS)
    return np.cumsum(fg_hist[::-1]), np.cumsum(bg_hist[::-1])


def _f_beta(precision: np.ndarray, recall: np.ndarray, beta2: float) -> np.ndarray:
    numerator = (1 + beta2) * precision * recall
    denominator = np.where(numerator == 0, 1.0, beta2 * precision + recall)
    return numerator / denominator


def precision_recall_f(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F_β (β² = 0.3) at thresholds 255 → 0 for a normalized prediction."""
    tp, fp = _threshold_counts(pred, gt)
    predicted = tp + fp
    predicted[predicted == 0] = 1  # then tp is 0 too
    precision = tp / predicted
    recall = tp / max(np.count_nonzero(gt), 1)
    return precision, recall, _f_beta(precision, recall, BETA2)


def adaptive_f_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    binary = pred >= adaptive_threshold(pred)
    intersection = np.count_nonzero(binary & gt)
    if intersection == 0:
        return 0.0
    precision = intersection / np.count_nonzero(binary)
    recall = intersection / np.count_nonzero(gt)
    return float((1 + BETA2) * precision * recall / (BETA2 * precision + recall))


def _object_similarity(values: np.ndarray) -> float:
    mean = float(np.mean(values))
    std = float(np.std(values, ddof=1)) if values.size > 1 else 0.0
    return 2 * mean / (mean**2 + 1 + std + EPS)


def _ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """The S-measure's region SSIM (no stabilizing constants, N-1 normalization as in the MATLAB code)."""
    n = pred.size
    x, y = pred.mean(), gt.mean()
    sigma_x = np.sum((pred - x) ** 2) / (n - 1 + EPS)
    sigma_y = np.sum((gt - y) ** 2) / (n - 1 + EPS)
    sigma_xy = np.sum((pred - x) * (gt - y)) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x**2 + y**2) * (sigma_x + sigma_y)
    if alpha != 0:
        return float(alpha / (beta + EPS))
    return 1.0 if beta == 0 else 0.0


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = S_ALPHA) -> float:
    """Structure measure: α·object similarity + (1−α)·region similarity (four quadrants around the centroid)."""
    fg_share = float(np.mean(gt))
    if fg_share == 0:
        return float(1 - np.mean(pred))
    if fg_share == 1:
        return float(np.mean(pred))
    gt_f = gt.astype(np.float64)
    object_score = fg_share * _object_similarity(pred[gt]) + (1 - fg_share) * _object_similarity(1 - pred[~gt])
    h, w = gt.shape
    cy, cx = np.argwhere(gt).mean(axis=0).round()
    # MATLAB's 1-based ``1:X`` includes X: the split point is one past the rounded centroid.
    cy, cx = int(cy) + 1, int(cx) + 1
    area = h * w
    w_lt = cx * cy / area
    w_rt = cy * (w - cx) / area
    w_lb = (h - cy) * cx / area
    w_rb = 1 - w_lt - w_rt - w_lb
    region_score = (
        w_lt * _ssim(pred[:cy, :cx], gt_f[:cy, :cx])
        + w_rt * _ssim(pred[:cy, cx:], gt_f[:cy, cx:])
        + w_lb * _ssim(pred[cy:, :cx], gt_f[cy:, :cx])
        + w_rb * _ssim(pred[cy:, cx:], gt_f[cy:, cx:])
    )
    return float(max(0.0, alpha * object_score + (1 - alpha) * region_score))


def _enhanced_alignment_sum(
    pred_fg_in_fg: np.ndarray, pred_fg_in_bg: np.ndarray, gt_fg: int, size: int
) -> np.ndarray | float:
    """Σ of the enhanced alignment matrix for binary maps given by their pixel counts (vectorized over thresholds).

    A binary map and the mask take two values each, so the alignment matrix takes four values, one per
    (prediction, mask) combination; the sum is the value times its pixel count.
    """
    pred_fg = pred_fg_in_fg + pred_fg_in_bg
    pred_bg = size - pred_fg
    if gt_fg == 0:
        return pred_bg
    if gt_fg == size:
        return pred_fg
    pred_bg_in_fg = gt_fg - pred_fg_in_fg
    pred_bg_in_bg = pred_bg - pred_bg_in_fg
    pred_mean = pred_fg / size
    gt_mean = gt_fg / size
    total = 0.0
    for count, pred_value, gt_value in (
        (pred_fg_in_fg, 1 - pred_mean, 1 - gt_mean),
        (pred_fg_in_bg, 1 - pred_mean, -gt_mean),
        (pred_bg_in_fg, -pred_mean, 1 - gt_mean),
        (pred_bg_in_bg, -pred_mean, -gt_mean),
    ):
        align = 2 * pred_value * gt_value / (pred_value**2 + gt_value**2 + EPS)
        total = total + (align + 1) ** 2 / 4 * count
    return total


def e_measure_curve(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """E-measure of the binarized prediction at thresholds 255 → 0."""
    fg_fg, fg_bg = _threshold_counts(pred, gt)
    total = _enhanced_alignment_sum(fg_fg, fg_bg, int(np.count_nonzero(gt)), gt.size)
    return np.asarray(total, dtype=np.float64) / (gt.size - 1 + EPS)


def adaptive_e_measure(pred: np.ndarray, gt: np.ndarray) -> float:
    binary = pred >= adaptive_threshold(pred)
    total = _enhanced_alignment_sum(
        np.count_nonzero(binary & gt), np.count_nonzero(binary & ~gt), int(np.count_nonzero(gt)), gt.size
    )
    return float(total / (gt.size - 1 + EPS))


def _matlab_gaussian(size: int = 7, sigma: float = 5.0) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``."""
    half = (size - 1) / 2
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    kernel = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    kernel[kernel < np.finfo(kernel.dtype).eps * kernel.max()] = 0
    return kernel / kernel.sum()


def weighted_f_measure(pred: np.ndarray, gt: np.ndarray, beta2: float = WEIGHTED_F_BETA2) -> float:
    """Margolin's weighted F: errors spread from the nearest foreground pixel and weighted by distance to it."""
    if not gt.any():
        return 0.0
    distance, nearest = distance_transform_edt(~gt, return_indices=True)
    error = np.abs(pred - gt)
    # Background pixels take the error of their nearest foreground pixel (pixel dependency at edges).
    spread = error.copy()
    spread[~gt] = spread[nearest[0][~gt], nearest[1][~gt]]
    smoothed = convolve(spread, weights=_matlab_gaussian(), mode="constant", cval=0)
    min_error = np.where(gt & (smoothed < error), smoothed, error)
    importance = np.where(gt, 1.0, 2 - np.exp(np.log(0.5) / 5 * distance))
    weighted_error = min_error * importance
    tp = np.count_nonzero(gt) - np.sum(weighted_error[gt])
    fp = np.sum(weighted_error[~gt])
    recall = 1 - np.mean(weighted_error[gt])
    precision = tp / (tp + fp + EPS)
    return float((1 + beta2) * recall * precision / (recall + beta2 * precision + EPS))


class SaliencyMetrics:
    """Accumulates per-image results; ``results()`` returns dataset-level numbers, ``curves()`` the PR/F curves.

    Feed uint8 predictions (see :func:`to_uint8`) at the ground truth's size and boolean masks.
    """

    def __init__(self) -> None:
        self._precision: list[np.ndarray] = []
        self._recall: list[np.ndarray] = []
        self._f: list[np.ndarray] = []
        self._e: list[np.ndarray] = []
        self._scalars: dict[str, list[float]] = {k: [] for k in ("mae", "adaptive_f", "s_measure", "adaptive_e")}
        self._scalars["weighted_f"] = []

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Score one image.

        Args:
            pred: uint8 saliency map ``[H,W]``.
            gt: boolean mask ``[H,W]``.
        """
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        if pred.dtype != np.uint8:
            raise TypeError("predictions must be uint8 maps (use to_uint8)")
        gt = gt.astype(bool)
        pred_n = normalize_prediction(pred)
        precision, recall, f = precision_recall_f(pred_n, gt)
        self._precision.append(precision)
        self._recall.append(recall)
        self._f.append(f)
        self._e.append(e_measure_curve(pred_n, gt))
        self._scalars["mae"].append(float(np.mean(np.abs(pred_n - gt))))
        self._scalars["adaptive_f"].append(adaptive_f_measure(pred_n, gt))
        self._scalars["s_measure"].append(s_measure(pred_n, gt))
        self._scalars["adaptive_e"].append(adaptive_e_measure(pred_n, gt))
        self._scalars["weighted_f"].append(weighted_f_measure(pred_n, gt))

    def __len__(self) -> int:
        return len(self._f)

    def per_image(self, metric: str) -> list[float]:
        """One per-image scalar (``mae``, ``adaptive_f``, ``s_measure``, ``adaptive_e``, ``weighted_f``), in the
        order the images were scored."""
        if metric not in self._scalars:
            raise KeyError(f"no per-image {metric!r}; one of {', '.join(self._scalars)}")
        return list(self._scalars[metric])

    def curves(self) -> dict[str, np.ndarray]:
        """Dataset-mean curves over thresholds 255 → 0: ``precision``, ``recall``, ``f``, ``e``."""
        if not self._f:
            raise ValueError("no images were scored")
        return {
            "precision": np.mean(self._precision, axis=0),
            "recall": np.mean(self._recall, axis=0),
            "f": np.mean(self._f, axis=0),
            "e": np.mean(self._e, axis=0),
        }

    def results(self) -> dict[str, float]:
        """``n_images, mae, max_f, mean_f, adaptive_f, s_measure, max_e, mean_e, adaptive_e, weighted_f``."""
        curves = self.curves()
        means = {k: float(np.mean(v)) for k, v in self._scalars.items()}
        return {
            "n_images": len(self),
            "mae": means["mae"],
            "max_f": float(curves["f"].max()),
            "mean_f": float(curves["f"].mean()),
            "adaptive_f": means["adaptive_f"],
            "s_measure": means["s_measure"],
            "max_e": float(curves["e"].max()),
            "mean_e": float(curves["e"].mean()),
            "adaptive_e": means["adaptive_e"],
            "weighted_f": means["weighted_f"],
        }
