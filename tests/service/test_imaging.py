"""Decoding limits and conversions, and preprocessing parity with the training transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.imaging import decode_image, encode_png, overlay, preprocess, sniff_format
from service.manifest import PreprocessSpec
from tests.service.conftest import encode, scene

LIMITS = {"max_bytes": 5_000_000, "max_pixels": 4_000_000}
SPEC = PreprocessSpec(input_size=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@pytest.mark.parametrize(
    ("fmt", "save_args", "tolerance"),
    [
        ("PNG", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("JPEG", {"quality": 95, "subsampling": 0}, 4),
    ],
)
def test_formats_decode_to_the_same_picture(fmt: str, save_args: dict, tolerance: float) -> None:
    pixels = scene(40, 30)
    decoded = np.asarray(decode_image(encode(pixels, fmt, **save_args), **LIMITS))
    assert decoded.shape == (30, 40, 3)
    assert np.abs(decoded.astype(int) - pixels.astype(int)).mean() <= tolerance


def test_gif_first_frame() -> None:
    first, second = Image.new("P", (20, 10), 1), Image.new("P", (20, 10), 2)
    palette = [0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    for frame in (first, second):
        frame.putpalette(palette)
    buffer = io.BytesIO()
    first.save(buffer, format="GIF", save_all=True, append_images=[second])
    decoded = np.asarray(decode_image(buffer.getvalue(), **LIMITS))
    assert tuple(decoded[0, 0]) == (255, 0, 0)


def test_exif_orientation_is_applied() -> None:
    pixels = np.zeros((10, 30, 3), np.uint8)
    pixels[:, :5] = 255  # white band on the left of the stored picture
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode(pixels, "JPEG", exif=exif, quality=95)
    decoded = np.asarray(decode_image(data, **LIMITS))
    assert decoded.shape == (30, 10, 3)  # displayed upright: portrait
    assert decoded[:5].mean() > 200 and decoded[-5:].mean() < 50  # the left band is now on top


def test_modes_are_converted_like_training() -> None:
    from training.data import load_rgb

    rgb = scene(24, 16)
    grey16 = (np.linspace(0, 40000, 24 * 16).reshape(16, 24)).astype(np.uint16)
    rgba = np.dstack([rgb, np.full((16, 24), 128, np.uint8)])
    cases = {
        "grey": Image.fromarray(rgb).convert("L"),
        "palette": Image.fromarray(rgb).convert("P"),
        "cmyk": Image.fromarray(rgb).convert("CMYK"),
        "grey16": Image.fromarray(grey16),
        "rgba": Image.fromarray(rgba, "RGBA"),
        "la": Image.fromarray(rgba, "RGBA").convert("LA"),
    }
    for name, img in cases.items():
        fmt = "JPEG" if name == "cmyk" else "TIFF" if name == "grey16" else "PNG"
        data = encode(img, fmt, quality=95) if fmt == "JPEG" else encode(img, fmt)
        ours = np.asarray(decode_image(data, **LIMITS))
        theirs = np.asarray(load_rgb_bytes(load_rgb, data))
        assert ours.shape == (16, 24, 3), name
        np.testing.assert_array_equal(ours, theirs, err_msg=name)
    # 16-bit: scaled by its maximum, so the brightest pixel is white, not clipped at 255 everywhere.
    grey = np.asarray(decode_image(encode(cases["grey16"], "TIFF"), **LIMITS))[..., 0]
    assert grey.max() == 255 and grey.min() == 0 and len(np.unique(grey)) > 100
    # Alpha: composited on white, so a half-transparent black pixel turns mid-grey.
    black = np.dstack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 128, np.uint8)])
    assert abs(int(np.asarray(decode_image(encode(Image.fromarray(black, "RGBA")), **LIMITS))[0, 0, 0]) - 127) <= 1


def load_rgb_bytes(load_rgb, data: bytes) -> Image.Image:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(data)
        return load_rgb(path)


def test_refusals() -> None:
    def status(data: bytes, **limits: int) -> int:
        with pytest.raises(ServiceError) as info:
            decode_image(data, **(LIMITS | limits))
        return info.value.status

    png = encode(scene(40, 30))
    assert status(png, max_bytes=len(png) - 1) == 413
    assert status(png, max_pixels=40 * 30 - 1) == 413
    assert status(png[: len(png) // 2]) == 400  # truncated
    assert status(b"") == 400
    assert status(b"%PDF-1.4 not an image") == 415
    assert status(b"<svg xmlns='http://www.w3.org/2000/svg'/>") == 415
    assert status(b"\x89PNG\r\n\x1a\n" + b"\x00" * 50) == 400  # right magic, garbage inside


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = encode(Image.new("L", (12000, 12000)))  # 144 Mpx of zeros compress to ~150 kB
    assert len(bomb) < 500_000
    with pytest.raises(ServiceError) as info:
        decode_image(bomb, **LIMITS)
    assert info.value.status == 413 and info.value.code == "too_many_pixels"


def test_preprocessing_matches_the_training_transform() -> None:
    from training.transforms import Preprocess, preprocess_image

    image = Image.fromarray(scene(120, 80, seed=3))
    ours = preprocess(image, SPEC)
    theirs = preprocess_image(image, Preprocess(input_size=224)).numpy()
    assert ours.dtype == np.float32 and ours.shape == (3, 224, 224)
    np.testing.assert_array_equal(ours, theirs)


def test_sniff_and_encode() -> None:
    assert sniff_format(encode(scene(), "WEBP")) == "WEBP"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WAVE") is None
    grey = (np.arange(64, dtype=np.uint8).reshape(8, 8)) * 4
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encode_png(grey)))), grey)


def test_overlay_tints_salient_pixels() -> None:
    image = Image.fromarray(np.full((4, 4, 3), 100, np.uint8))
    saliency = np.zeros((4, 4), np.float32)
    saliency[0, 0] = 1.0
    out = overlay(image, saliency)
    # 0.4 × the pixel + 0.6 × the red tint where salient: (0.4·100 + 0.6·255, 0.4·100 + 0.6·32, ...)
    assert tuple(out[0, 0]) == (193, 59, 59)
    assert tuple(out[3, 3]) == (45, 45, 45)  # dimmed where not
