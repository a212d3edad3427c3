"""Real images for parity, calibration and accuracy checks, preprocessed exactly as training and the service do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data import IMAGE_EXTENSIONS, load_rgb, read_split
from training.transforms import Preprocess, preprocess_image


def list_images(folder: str | Path, split: str | Path | None = None, limit: int | None = None) -> list[Path]:
    """Image files of ``folder`` sorted by name, restricted to the stems of ``split`` when given.

    Raises:
        FileNotFoundError: the folder does not exist or holds no image (of the split).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if split is not None:
        stems = set(read_split(Path(split)))
        files = [p for p in files if p.stem in stems]
    if not files:
        raise FileNotFoundError(f"no images in {folder}" + (f" for split {split}" if split else ""))
    return files[:limit] if limit else files


def load_batch(paths: list[Path], pre: Preprocess) -> np.ndarray:
    """Decode and preprocess images into one float32 ``[N,3,S,S]`` array (the service's input tensor)."""
    return np.stack([preprocess_image(load_rgb(p), pre).numpy() for p in paths]).astype(np.float32)
