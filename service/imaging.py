"""Image decoding with limits, preprocessing per the manifest, and PNG/overlay encoding (numpy + Pillow only)."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

from service.errors import ServiceError
from service.manifest import PreprocessSpec

# Magic numbers of the accepted formats: anything else is refused as unsupported (415) before Pillow sees it,
# so "not an image we take" and "an image we take but broken" (400) get different answers.
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"WEBP", 8, "WEBP"),
)
SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")


def sniff_format(data: bytes) -> str | None:
    """The image format named by the file's first bytes, or ``None`` when it is none we accept."""
    for magic, offset, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` as RGB: 16-bit scaled by its maximum, transparency composited on white, everything else through
    Pillow's convert. Training's image loader uses it too, so the service sees what the models were trained on."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr / max(arr.max(), 1.0) * 255.0, 0, 255).astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


@dataclass(frozen=True)
class ImageHeader:
    """What an upload's header says, before any pixel is decoded.

    Attributes:
        format: one of :data:`SUPPORTED_FORMATS`.
        width, height: the upright size (EXIF orientation applied).
    """

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height


# EXIF orientations that turn the image by 90°: width and height swap.
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
_HEAP_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _check_bytes(data: bytes, max_bytes: int) -> str:
    if len(data) > max_bytes:
        raise ServiceError(413, "upload_too_large", f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise ServiceError(400, "empty_image", "the uploaded image is empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise ServiceError(
            415, "unsupported_media_type", f"not a supported image; send one of {', '.join(SUPPORTED_FORMATS)}"
        )
    return fmt


def _corrupt(fmt: str, exc: Exception) -> ServiceError:
    # Pillow's messages can name the in-memory file object ("<_io.BytesIO object at 0x7f...>"): no heap addresses.
    detail = _HEAP_ADDRESS.sub("the upload", str(exc))
    return ServiceError(400, "corrupt_image", f"cannot decode the {fmt} image: {detail}")


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Open (header only) and check the pixel count before anything is decoded."""
    img = Image.open(io.BytesIO(data), formats=[fmt])
    width, height = img.size
    if width * height > max_pixels:
        raise ServiceError(
            413, "too_many_pixels", f"image is {width}x{height} = {width * height} pixels; limit {max_pixels}"
        )
    return img


@contextlib.contextmanager
def _pillow_errors(fmt: str) -> Iterator[None]:
    """Pillow's failures as the service's: decompression bombs (warnings too) 413, anything else on bad data 400."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ServiceError(413, "too_many_pixels", f"image refused as a decompression bomb: {exc}") from exc
    except ServiceError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types (OSError, ValueError, struct.error...) on bad data
        raise _corrupt(fmt, exc) from exc


def read_header(data: bytes, max_bytes: int, max_pixels: int) -> ImageHeader:
    """The format and upright size of an upload from its header alone (cheap; nothing is decoded).

    Raises:
        ServiceError: as :func:`decode_image`, for what the header alone shows.
    """
    fmt = _check_bytes(data, max_bytes)
    with _pillow_errors(fmt):
        img = _open(data, fmt, max_pixels)
        width, height = img.size
        if img.getexif().get(ExifTags.Base.Orientation) in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    return ImageHeader(fmt, width, height)


def fit_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled down (aspect kept, each side at least 1) so that its longer side is at most ``max_side``."""
    width, height = size
    if max_side is None or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def decode_image(data: bytes, max_bytes: int, max_pixels: int, max_side: int | None = None) -> Image.Image:
    """Bytes of an uploaded file → an RGB image, upright per its EXIF orientation (first frame of animations).

    The pixel count is checked from the header, before the pixels are decoded, so a decompression bomb costs
    nothing. With ``max_side``, the image comes back scaled to fit it, and a JPEG is decoded at a reduced scale
    (libjpeg's DCT scaling) when that still covers the fitted size, so a huge JPEG never exists at full size.

    Raises:
        ServiceError: 413 over ``max_bytes`` or ``max_pixels``; 415 not JPEG/PNG/WebP/BMP/TIFF/GIF;
            400 empty, truncated or corrupt.
    """
    fmt = _check_bytes(data, max_bytes)
    with _pillow_errors(fmt):
        img = _open(data, fmt, max_pixels)
        img.seek(0)
        if max_side is not None and fmt == "JPEG":
            img.draft(img.mode, fit_size(img.size, max_side))
        img.load()
        img = to_rgb(ImageOps.exif_transpose(img))  # RGB first: palette images would resize by nearest
        if max_side is not None and max(img.size) > max_side:
            img = img.resize(fit_size(img.size, max_side), Image.BILINEAR, reducing_gap=2.0)
    return img


def preprocess(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """RGB image → normalized float32 ``[3,S,S]`` network input, exactly as training's ``preprocess_image``."""
    if spec.resize != "stretch":
        raise ValueError(f"unsupported resize mode {spec.resize!r}")
    resized = image.resize((spec.input_size, spec.input_size), Image.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def resize_map(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A float ``[h,w]`` map bilinearly resized to ``size`` = (width, height), still float32."""
    return np.asarray(Image.fromarray(values.astype(np.float32), mode="F").resize(size, Image.BILINEAR))


def to_uint8(values: np.ndarray) -> np.ndarray:
    """A map in [0,1] → uint8 [0,255] (rounded)."""
    return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 ``[H,W]`` (grey), ``[H,W,3]`` (RGB) or ``[H,W,4]`` (RGBA) → PNG bytes.

    Compression level 1: PNG encoding was the largest non-model cost of a request (MEASURED.md); level 1 is several
    times faster than the default 6 for maps that are a little larger.
    """
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def overlay(image: Image.Image, saliency: np.ndarray, alpha: float = 0.6, rows_per_chunk: int = 128) -> np.ndarray:
    """The image dimmed where not salient and tinted red where salient: uint8 ``[H,W,3]``.

    Computed in bands of ``rows_per_chunk`` rows, so the float temporaries stay small whatever the image size.

    Args:
        image: the RGB image at the map's size.
        saliency: float map in [0,1] at the same size.
        alpha: strength of the tint.
    """
    rgb = np.asarray(image)
    out = np.empty_like(rgb)
    tint = np.array([255.0, 32.0, 32.0], dtype=np.float32)
    for top in range(0, rgb.shape[0], rows_per_chunk):
        band = slice(top, top + rows_per_chunk)
        sal = saliency[band][..., None].astype(np.float32)
        weight = alpha * sal
        dimmed = rgb[band].astype(np.float32) * (0.45 + 0.55 * sal)
        out[band] = np.clip(dimmed * (1.0 - weight) + tint * weight, 0, 255).astype(np.uint8)
    return out
