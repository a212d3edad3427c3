"""Datasets in the common salient-object-detection layout: ``images/*.jpg|png`` + ``masks/*.png`` by stem."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from service.imaging import to_rgb
from training.fixation_metrics import fixation_density

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")


class DatasetError(ValueError):
    """A dataset folder, split or file is missing or unreadable; the message names it."""


def index_by_stem(folder: Path, what: str) -> dict[str, Path]:
    """Map file stem → path for every image file in ``folder``."""
    if not folder.is_dir():
        raise DatasetError(f"{what} folder not found: {folder}")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS}
    if not files:
        raise DatasetError(f"{what} folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_split(path: Path) -> list[str]:
    """Stems listed one per line (blank lines ignored)."""
    if not path.is_file():
        raise DatasetError(f"split file not found: {path}")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB (EXIF orientation applied; greyscale, palette, CMYK, alpha and 16-bit converted)."""
    try:
        with Image.open(path) as img:
            return to_rgb(ImageOps.exif_transpose(img))
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}") from exc


def load_mask(path: Path) -> np.ndarray:
    """A ground-truth mask as a boolean array, binarized at >= 128 (the standard for grey-level masks)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L")) >= 128
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DatasetError(f"cannot read mask {path}: {exc}") from exc


@dataclass(frozen=True)
class Sample:
    stem: str
    image: Path
    mask: Path | None  # None: an image without a ground-truth mask (eye-tracking sets)


def list_pairs(images_dir: Path, masks_dir: Path | None, split: Path | None = None) -> list[Sample]:
    """Image/mask pairs matched by stem, optionally restricted to the stems of a split file; with no ``masks_dir``,
    the images alone (``mask`` is ``None``).

    Raises:
        DatasetError: a folder is missing, or an image (in the split) has no mask.
    """
    images = index_by_stem(Path(images_dir), "images")
    masks = index_by_stem(Path(masks_dir), "masks") if masks_dir is not None else None
    stems = read_split(Path(split)) if split else sorted(images)
    samples = []
    for stem in stems:
        if stem not in images:
            raise DatasetError(f"image for stem {stem!r} not found in {images_dir}")
        if masks is not None and stem not in masks:
            raise DatasetError(f"image {images[stem]} has no mask in {masks_dir}")
        samples.append(Sample(stem, images[stem], masks[stem] if masks is not None else None))
    return samples


class SaliencyDataset:
    """Image/mask pairs with a joint transform; decoded images are cached in memory (datasets are small).

    Args:
        samples: pairs from :func:`list_pairs` (several datasets may be concatenated).
        transform: ``(image, mask[, density]) -> (image_tensor, mask_tensor[, density_tensor])``.
        cache: keep decoded images and masks in memory after first use.
        fixations: for fixation-supervised training, eye fixations ``[N,2]`` ``(x, y)`` by image path. When given,
            every item also carries the fixation density map (:func:`training.fixation_metrics.fixation_density`,
            all zeros for an image without fixations, which the losses then leave out).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable,
        cache: bool = True,
        fixations: dict[Path, np.ndarray] | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.fixations = fixations
        # keyed by image path: a set listed several times (oversampled) is decoded and held once
        self._cache: dict[Path, tuple[Image.Image, np.ndarray]] = {} if cache else None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        sample = self.samples[index]
        if self._cache is not None and sample.image in self._cache:
            return self._cache[sample.image]
        pair = load_rgb(sample.image), load_mask(sample.mask)
        if pair[0].size != (pair[1].shape[1], pair[1].shape[0]):
            raise DatasetError(
                f"image {sample.image} is {pair[0].size[0]}x{pair[0].size[1]} but its mask {sample.mask} is "
                f"{pair[1].shape[1]}x{pair[1].shape[0]}"
            )
        if self._cache is not None:
            self._cache[sample.image] = pair
        return pair

    def fixation_map(self, index: int, shape: tuple[int, int]) -> np.ndarray:
        """The fixation density of sample ``index`` at ``shape`` (zeros when it has no fixations)."""
        points = self.fixations.get(self.samples[index].image) if self.fixations is not None else None
        if points is None or len(points) == 0:
            return np.zeros(shape, dtype=np.float32)
        return fixation_density(points, shape).astype(np.float32)

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if self.fixations is None:
            return self.transform(image, mask)
        return self.transform(image, mask, self.fixation_map(index, mask.shape))


def fixations_by_image(csv_path: Path, samples: Sequence[Sample]) -> dict[Path, np.ndarray]:
    """The fixations of ``csv_path`` as ``[N,2]`` ``(x, y)`` arrays keyed by the samples' image paths.

    Raises:
        DatasetError: the file is missing or malformed, or has fixations for none of the samples.
    """
    by_stem = read_fixations(csv_path)
    found = {
        s.image: np.array([[f.x, f.y] for f in by_stem[s.stem]], dtype=np.float64) for s in samples if s.stem in by_stem
    }
    if not found:
        raise DatasetError(f"fixation file {csv_path} has no fixations for any of the {len(samples)} images")
    return found


@dataclass(frozen=True)
class Fixation:
    stem: str
    subject: str
    x: float
    y: float


def read_fixations(csv_path: Path) -> dict[str, list[Fixation]]:
    """Eye fixations from a csv with columns ``stem, x, y`` (optionally ``subject``, ``order``), by stem.

    Coordinates are 0-based pixels, x = column.
    """
    if not Path(csv_path).is_file():
        raise DatasetError(f"fixation file not found: {csv_path}")
    by_stem: dict[str, list[Fixation]] = {}
    with open(csv_path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = {"stem", "x", "y"} - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"fixation file {csv_path} lacks columns {sorted(missing)}")
        for row in reader:
            fix = Fixation(row["stem"], row.get("subject", ""), float(row["x"]), float(row["y"]))
            by_stem.setdefault(fix.stem, []).append(fix)
    return by_stem
