"""Alignment of attention (or saliency) maps with human eye fixations.

Definitions follow the MIT/Tübingen saliency benchmark (Bylinskii et al., TPAMI 2019; Kümmerer et al., PNAS 2015):

- **NSS**: mean of the map, standardized to zero mean and unit (sample, MATLAB ``std``) deviation, at fixations.
- **CC**: Pearson correlation between the map and the fixation density (fixations blurred with a Gaussian).
- **KL**: ``KL(density ‖ map)`` with both normalized to sum 1 (MIT benchmark's ε = 2.2e-16 inside the log).
- **Shuffled AUC**: ROC area separating the map's values at this image's fixations (positives) from its values at
  the fixation locations of *other* images (negatives, mapped by relative position), which discounts centre bias.
  The benchmark draws 100 random negative subsets; here every other fixation is a negative, which is the exact
  expectation of that estimate and deterministic.
- **Information gain** (bits per fixation): ``mean_f log2(p_map(f) + ε) − log2(p_base(f) + ε)`` where both maps
  are normalized to probability distributions over pixels. The baseline of :class:`FixationMetrics` is a
  :class:`CentreBias` fitted on the fixations of training images when one is given, else the analytic centre-bias
  prior of :func:`training.baselines.centre_prior`; the results name it (``ig_baseline``).

Fixations are ``[N,2]`` arrays of ``(x, y)`` pixel coordinates, 0-based, x = column.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter

from training.baselines import centre_prior

MIT_EPS = 2.2204e-16  # MATLAB ``eps``, as in the MIT benchmark code


def _pixels(fixations: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of fixations, rounded and clipped into the image."""
    fixations = np.asarray(fixations, dtype=np.float64).reshape(-1, 2)
    cols = np.clip(np.round(fixations[:, 0]).astype(int), 0, shape[1] - 1)
    rows = np.clip(np.round(fixations[:, 1]).astype(int), 0, shape[0] - 1)
    return rows, cols


def fixation_density(fixations: np.ndarray, shape: tuple[int, int], sigma: float | None = None) -> np.ndarray:
    """Fixation counts blurred with a Gaussian, normalized to sum 1 (uniform when there are no fixations).

    Args:
        fixations: ``[N,2]`` ``(x, y)`` pixel coordinates.
        shape: ``(H, W)`` of the image.
        sigma: blur in pixels; default 1/32 of the longer side (≈ 1° of visual angle for typical setups).

    Returns:
        ``[H,W]`` float64 density.
    """
    counts = np.zeros(shape, dtype=np.float64)
    rows, cols = _pixels(fixations, shape)
    np.add.at(counts, (rows, cols), 1.0)
    density = gaussian_filter(counts, sigma if sigma is not None else max(shape) / 32, mode="constant")
    total = density.sum()
    return density / total if total > 0 else np.full(shape, 1.0 / (shape[0] * shape[1]))


def nss(saliency: np.ndarray, fixations: np.ndarray) -> float:
    """Normalized scanpath saliency; 0 for a constant map."""
    saliency = saliency.astype(np.float64)
    std = saliency.std(ddof=1)
    if std == 0:
        return 0.0
    rows, cols = _pixels(fixations, saliency.shape)
    return float(np.mean((saliency[rows, cols] - saliency.mean()) / std))


def cc(saliency: np.ndarray, density: np.ndarray) -> float:
    """Pearson correlation coefficient; 0 when either map is constant."""
    a = saliency.astype(np.float64).ravel()
    b = density.astype(np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    denominator = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denominator) if denominator > 0 else 0.0


def kl_divergence(saliency: np.ndarray, density: np.ndarray) -> float:
    """``Σ Q log(ε + Q / (P + ε))`` with P the map and Q the fixation density, each normalized to sum 1."""
    p = saliency.astype(np.float64)
    q = density.astype(np.float64)
    p = p / max(p.sum(), MIT_EPS)
    q = q / max(q.sum(), MIT_EPS)
    return float(np.sum(q * np.log(MIT_EPS + q / (p + MIT_EPS))))


def auc(positives: np.ndarray, negatives: np.ndarray) -> float:
    """Area under the ROC curve: P(positive > negative) + ½ P(tie) (Mann–Whitney)."""
    positives = np.asarray(positives, dtype=np.float64)
    negatives = np.asarray(negatives, dtype=np.float64)
    if positives.size == 0 or negatives.size == 0:
        raise ValueError("AUC needs at least one positive and one negative")
    sorted_negatives = np.sort(negatives)
    below = np.searchsorted(sorted_negatives, positives, side="left")
    below_or_equal = np.searchsorted(sorted_negatives, positives, side="right")
    return float(np.mean(below + 0.5 * (below_or_equal - below)) / negatives.size)


def shuffled_auc(saliency: np.ndarray, fixations: np.ndarray, other_fixations: np.ndarray) -> float:
    """AUC of the map's values at this image's fixations against its values at other images' fixations.

    Args:
        saliency: ``[H,W]`` map.
        fixations: ``[N,2]`` fixations of this image, pixels.
        other_fixations: ``[M,2]`` fixations of other images, as *relative* ``(x/W, y/H)`` in [0,1], so that
            images of any size can lend their fixations.
    """
    h, w = saliency.shape
    rows, cols = _pixels(fixations, saliency.shape)
    other = np.asarray(other_fixations, dtype=np.float64).reshape(-1, 2) * np.array([w, h])
    neg_rows, neg_cols = _pixels(other, saliency.shape)
    return auc(saliency[rows, cols], saliency[neg_rows, neg_cols])


def information_gain(saliency: np.ndarray, fixations: np.ndarray, baseline: np.ndarray) -> float:
    """Bits per fixation gained by the map over ``baseline``, both normalized to distributions over pixels."""
    p = saliency.astype(np.float64)
    b = baseline.astype(np.float64)
    p = p / max(p.sum(), MIT_EPS)
    b = b / max(b.sum(), MIT_EPS)
    rows, cols = _pixels(fixations, saliency.shape)
    return float(np.mean(np.log2(p[rows, cols] + MIT_EPS) - np.log2(b[rows, cols] + MIT_EPS)))


class CentreBias:
    """Where people look regardless of content, fitted on the fixations of other (training) images: the density of
    their positions relative to the image size, on a ``grid`` × ``grid`` canvas blurred by ``sigma`` cells and mixed
    with 1 % of a uniform map (no pixel gets zero probability), stretched to each image's shape.

    Args:
        relative_fixations: ``[N,2]`` ``(x/W, y/H)`` in [0, 1] from the training images.
        images: how many images they came from (for the description).
        grid, sigma: canvas side and blur.
    """

    def __init__(self, relative_fixations: np.ndarray, images: int, grid: int = 64, sigma: float = 2.0) -> None:
        points = np.asarray(relative_fixations, dtype=np.float64).reshape(-1, 2)
        if len(points) == 0:
            raise ValueError("a centre bias needs fixations to fit")
        counts = np.zeros((grid, grid))
        cols = np.clip((points[:, 0] * grid).astype(int), 0, grid - 1)
        rows = np.clip((points[:, 1] * grid).astype(int), 0, grid - 1)
        np.add.at(counts, (rows, cols), 1.0)
        density = gaussian_filter(counts, sigma, mode="nearest")
        self.canvas = 0.99 * density / density.sum() + 0.01 / grid**2
        self.name = f"centre_bias fitted on {len(points)} fixations of {images} training images"

    def __call__(self, shape: tuple[int, int]) -> np.ndarray:
        """The bias at ``shape`` (``(H, W)``): nearest canvas cell per pixel."""
        grid = self.canvas.shape[0]
        rows = np.minimum(((np.arange(shape[0]) + 0.5) * grid / shape[0]).astype(int), grid - 1)
        cols = np.minimum(((np.arange(shape[1]) + 0.5) * grid / shape[1]).astype(int), grid - 1)
        return self.canvas[np.ix_(rows, cols)]


class FixationMetrics:
    """Accumulates per-image fixation metrics; ``results()`` averages them over images.

    Args:
        density_sigma: blur of the fixation density for CC and KL (pixels); default 1/32 of the longer side.
        baseline: the information-gain baseline; default the analytic centre prior.
    """

    def __init__(self, density_sigma: float | None = None, baseline: CentreBias | None = None) -> None:
        self.density_sigma = density_sigma
        self.baseline = baseline
        self._scores: dict[str, list[float]] = {k: [] for k in ("shuffled_auc", "information_gain", "nss", "cc", "kl")}

    def update(self, saliency: np.ndarray, fixations: np.ndarray, other_fixations: np.ndarray) -> None:
        """Score one image.

        Args:
            saliency: ``[H,W]`` float map at the image's size (any non-negative scale).
            fixations: ``[N,2]`` ``(x, y)`` pixel fixations of this image (N ≥ 1).
            other_fixations: ``[M,2]`` relative ``(x/W, y/H)`` fixations of other images, for shuffled AUC.
        """
        if len(fixations) == 0:
            raise ValueError("an image without fixations cannot be scored")
        saliency = np.clip(saliency.astype(np.float64), 0, None)
        density = fixation_density(fixations, saliency.shape, self.density_sigma)
        self._scores["shuffled_auc"].append(shuffled_auc(saliency, fixations, other_fixations))
        base = self.baseline(saliency.shape) if self.baseline is not None else centre_prior(saliency.shape)
        self._scores["information_gain"].append(information_gain(saliency, fixations, base))
        self._scores["nss"].append(nss(saliency, fixations))
        self._scores["cc"].append(cc(saliency, density))
        self._scores["kl"].append(kl_divergence(saliency, density))

    def results(self) -> dict[str, float | int | str]:
        """Mean of each metric over the images, the image count and the information-gain baseline."""
        n = len(self._scores["nss"])
        if n == 0:
            raise ValueError("no images were scored")
        baseline = self.baseline.name if self.baseline is not None else "centre_prior"
        out: dict[str, float | int | str] = {"n_fixation_images": n, "ig_baseline": baseline}
        out.update({k: float(np.mean(v)) for k, v in self._scores.items()})
        return out
