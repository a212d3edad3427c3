"""Non-learned saliency baselines every model is compared with: a centre prior and spectral residual."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

BASELINES = ("centre_prior", "spectral_residual")
CENTRE_PRIOR_SIGMA = 0.25  # std of the Gaussian as a fraction of each side (MIT benchmark "center" baseline style)


def centre_prior(shape: tuple[int, int], sigma: float = CENTRE_PRIOR_SIGMA) -> np.ndarray:
    """An anisotropic Gaussian centred on the image, peak 1.

    Args:
        shape: ``(H, W)``.
        sigma: standard deviation as a fraction of the height (rows) and of the width (columns).

    Returns:
        ``[H,W]`` float64 map in (0, 1].
    """
    h, w = shape
    ys = (np.arange(h) + 0.5 - h / 2) / (sigma * h)
    xs = (np.arange(w) + 0.5 - w / 2) / (sigma * w)
    return np.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))


def spectral_residual(image: Image.Image) -> np.ndarray:
    """OpenCV's spectral-residual saliency (Hou & Zhang, CVPR 2007), rescaled to [0,1] at the image's size.

    Args:
        image: an RGB image.

    Returns:
        ``[H,W]`` float64 map in [0,1].
    """
    detector = cv2.saliency.StaticSaliencySpectralResidual_create()
    bgr = cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)
    ok, saliency = detector.computeSaliency(bgr)
    if not ok:
        raise RuntimeError("OpenCV spectral residual saliency failed")
    saliency = cv2.resize(saliency.astype(np.float32), image.size, interpolation=cv2.INTER_LINEAR).astype(np.float64)
    lo, hi = saliency.min(), saliency.max()
    return (saliency - lo) / (hi - lo) if hi > lo else np.zeros_like(saliency)


def baseline_map(name: str, image: Image.Image) -> np.ndarray:
    """The named baseline's ``[H,W]`` map in [0,1] for ``image`` (at the image's size)."""
    if name == "centre_prior":
        return centre_prior((image.height, image.width))
    if name == "spectral_residual":
        return spectral_residual(image)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
