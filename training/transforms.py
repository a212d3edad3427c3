"""Preprocessing (shared with export and the service through the bundle manifest) and training augmentation."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageEnhance

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes the network input; exported verbatim into the bundle manifest.

    ``resize="stretch"``: bilinear resize (PIL) to ``input_size`` × ``input_size`` ignoring aspect ratio,
    scale to [0, 1], subtract ``mean``, divide by ``std``, channels first.
    """

    input_size: int = 224
    resize: str = "stretch"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def to_dict(self) -> dict:
        return asdict(self)


def normalize(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """An RGB PIL image already at network size → normalized ``[3,S,S]`` float tensor."""
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(pre.mean, dtype=np.float32)) / np.asarray(pre.std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def preprocess_image(image: Image.Image, pre: Preprocess) -> torch.Tensor:
    """The evaluation/serving transform: resize per ``pre`` and normalize."""
    if pre.resize != "stretch":
        raise ValueError(f"unsupported resize mode {pre.resize!r}")
    size = (pre.input_size, pre.input_size)
    return normalize(image.resize(size, Image.BILINEAR), pre)


def mask_to_tensor(mask: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(mask.astype(np.float32))[None]


def density_to_tensor(density: np.ndarray) -> torch.Tensor:
    """A fixation density ``[H,W]`` → ``[1,H,W]`` float32 tensor (a copy: PIL's arrays are read-only)."""
    return torch.from_numpy(np.array(density, dtype=np.float32))[None]


@dataclass
class EvalTransform:
    """Resize the image to the network input; keep the mask at its original size for exact metrics."""

    pre: Preprocess = field(default_factory=Preprocess)

    def __call__(
        self, image: Image.Image, mask: np.ndarray, density: np.ndarray | None = None
    ) -> tuple[torch.Tensor, ...]:
        if density is None:
            return preprocess_image(image, self.pre), mask_to_tensor(mask)
        return preprocess_image(image, self.pre), mask_to_tensor(mask), density_to_tensor(density)


@dataclass
class TrainTransform:
    """Augmentation for training from scratch on ~1,500 images.

    The papers resize to 256 and take a random 224 crop with a horizontal flip. From scratch that overfits
    quickly, so crops are drawn at random scale and aspect (``scale``, ``ratio``), then a small rotation,
    colour jitter and occasional greyscale are applied. Masks follow the geometric part only and are
    resampled bilinearly then re-binarized at 0.5.

    Args:
        pre: preprocessing of the model (input size, mean, std).
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio (width / height).
        rotate: maximum rotation in degrees (uniform in ±rotate).
        jitter: maximum relative change of brightness, contrast and saturation.
        grey_p: probability of converting to greyscale.
        flip_p: probability of a horizontal flip.
    """

    pre: Preprocess = field(default_factory=Preprocess)
    scale: tuple[float, float] = (0.35, 1.0)
    ratio: tuple[float, float] = (0.75, 1.333)
    rotate: float = 10.0
    jitter: float = 0.3
    grey_p: float = 0.05
    flip_p: float = 0.5

    def __call__(
        self, image: Image.Image, mask: np.ndarray, density: np.ndarray | None = None
    ) -> tuple[torch.Tensor, ...]:
        mask_img = Image.fromarray(mask.astype(np.uint8) * 255)
        density_img = Image.fromarray(density.astype(np.float32), mode="F") if density is not None else None
        if self.rotate > 0:
            angle = random.uniform(-self.rotate, self.rotate)
            image = image.rotate(angle, Image.BILINEAR, fillcolor=tuple(int(255 * m) for m in self.pre.mean))
            mask_img = mask_img.rotate(angle, Image.BILINEAR, fillcolor=0)
            density_img = density_img.rotate(angle, Image.BILINEAR, fillcolor=0) if density_img else None
        box = self._crop_box(image.size)
        size = (self.pre.input_size, self.pre.input_size)
        image = image.resize(size, Image.BILINEAR, box=box)
        mask_img = mask_img.resize(size, Image.BILINEAR, box=box)
        density_img = density_img.resize(size, Image.BILINEAR, box=box) if density_img else None
        if random.random() < self.flip_p:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            mask_img = mask_img.transpose(Image.FLIP_LEFT_RIGHT)
            density_img = density_img.transpose(Image.FLIP_LEFT_RIGHT) if density_img else None
        image = self._colour(image)
        target = np.asarray(mask_img) >= 128
        if density_img is None:
            return normalize(image, self.pre), mask_to_tensor(target)
        return normalize(image, self.pre), mask_to_tensor(target), density_to_tensor(np.asarray(density_img))

    def _crop_box(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        width, height = size
        area = width * height
        for _ in range(10):
            target = area * random.uniform(*self.scale)
            aspect = math.exp(random.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            w = math.sqrt(target * aspect)
            h = math.sqrt(target / aspect)
            if w <= width and h <= height:
                x0 = random.uniform(0, width - w)
                y0 = random.uniform(0, height - h)
                return (x0, y0, x0 + w, y0 + h)
        return (0.0, 0.0, float(width), float(height))

    def _colour(self, image: Image.Image) -> Image.Image:
        if self.jitter > 0:
            ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
            random.shuffle(ops)
            for op in ops:
                image = op(image).enhance(random.uniform(1 - self.jitter, 1 + self.jitter))
        if random.random() < self.grey_p:
            image = image.convert("L").convert("RGB")
        return image
