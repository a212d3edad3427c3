"""rembg's HTTP API (``POST /api/remove``), so the tools built on rembg's server can use this one unchanged.

The request is the one rembg's server takes: multipart field ``file``; form fields ``model``, ``a`` (alpha matting),
``af``, ``ab``, ``ae`` (its thresholds), ``om`` (answer the mask only), ``ppm`` (post-process the mask); query
``bgc`` (``r,g,b,a`` background colour). The answer is a PNG: the RGBA cut-out whose alpha is the saliency map, or
the mask alone with ``om=true``. Differences from rembg: alpha matting is not implemented (``a=true`` answers 422),
rembg's model names all run this server's default model while this server's model names pick that model (the
``X-Model`` response header names it), and there is
no ``GET /api/remove?url=``: this server never fetches URLs (that route lets any client make the server request
any address), so it answers 405 asking for an upload.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response
from PIL import Image, ImageFilter

from service.deps import State, read_upload, require_single_field, served_pipeline
from service.errors import ServiceError
from service.imaging import encode_png, to_uint8

# rembg's session names (rembg 2.x): a client naming any of them gets this server's default model.
REMBG_MODELS = frozenset(
    {
        "u2net", "u2netp", "u2net_human_seg", "u2net_cloth_seg", "u2net_custom", "silueta", "isnet-general-use",
        "isnet-anime", "sam", "birefnet-general", "birefnet-general-lite", "birefnet-portrait", "birefnet-dis",
        "birefnet-hrsod", "birefnet-cod", "birefnet-massive", "bria-rmbg", "ben_custom", "dis_custom",
    }
)  # fmt: skip
MASK_THRESHOLD = 127  # rembg's post-processing threshold on 0–255 masks

router = APIRouter(prefix="/api", tags=["rembg"])


def post_process(mask: np.ndarray) -> np.ndarray:
    """rembg's ``post_process``: binarise, open with a 3×3 element, blur (σ≈2), binarise again: smooth edges."""
    binary = Image.fromarray(np.where(mask > MASK_THRESHOLD, 255, 0).astype(np.uint8))
    opened = binary.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3))
    blurred = np.asarray(opened.filter(ImageFilter.GaussianBlur(2)))
    return np.where(blurred < MASK_THRESHOLD, 0, 255).astype(np.uint8)


def parse_colour(text: str) -> tuple[int, int, int, int]:
    """``"r,g,b,a"`` with four integers in 0–255 (422 otherwise)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4 or not all(p.isdigit() and int(p) <= 255 for p in parts):
        raise ServiceError(422, "invalid_option", f"bgc {text!r} is not 'r,g,b,a' with four integers in 0-255")
    r, g, b, a = (int(p) for p in parts)
    return r, g, b, a


def cutout_png(image: Image.Image, mask: np.ndarray, only_mask: bool, background: tuple | None) -> bytes:
    """The PNG rembg would answer: the mask (``only_mask``), or the RGBA cut-out, composited over ``background``."""
    if only_mask:
        return encode_png(mask)
    rgba = np.dstack([np.asarray(image.convert("RGB")), mask])
    if background is None:
        return encode_png(rgba)
    cut = Image.fromarray(rgba, mode="RGBA")
    composite = Image.alpha_composite(Image.new("RGBA", cut.size, background), cut)
    return encode_png(np.asarray(composite))


@router.post(
    "/remove",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "RGBA cut-out (or the mask with om=true)"}},
)
async def remove(
    request: Request,
    file: Annotated[UploadFile, File(description="the image (JPEG, PNG, WebP, BMP, TIFF or GIF)")],
    state: State,
    model: Annotated[str, Form(description="this server's model name, or any rembg model name")] = "u2net",
    a: Annotated[bool, Form(description="alpha matting: not implemented, true answers 422")] = False,
    af: Annotated[int, Form(ge=0, le=255, description="alpha matting foreground threshold (needs a)")] = 240,
    ab: Annotated[int, Form(ge=0, le=255, description="alpha matting background threshold (needs a)")] = 10,
    ae: Annotated[int, Form(ge=0, description="alpha matting erosion size (needs a)")] = 10,
    om: Annotated[bool, Form(description="answer the mask only")] = False,
    ppm: Annotated[bool, Form(description="post-process the mask (smooth, binary edges)")] = False,
    bgc: Annotated[str | None, Query(description="background colour r,g,b,a of the cut-out")] = None,
    extras: Annotated[str | None, Query(description="rembg's model extras: not supported")] = None,
) -> Response:
    """Remove the background: the salient object kept, the rest transparent (rembg's API)."""
    await require_single_field(request, "file")
    # rembg's own model names (u2net, isnet-general-use, ...) get this server's default model.
    if model not in REMBG_MODELS and state.repository is not None and state.repository.find(model) is None:
        served = ", ".join(state.repository.names)
        raise ServiceError(422, "unknown_model", f"model {model!r}: use {served}, 'default' or a rembg model name")
    pipeline = served_pipeline(state, request, None if model in REMBG_MODELS else model)
    name = pipeline.engine.manifest.name
    if a:
        raise ServiceError(
            422, "option_not_supported", "alpha matting (a, af, ab, ae) is not implemented; send a=false (the default)"
        )
    if extras is not None:
        raise ServiceError(422, "option_not_supported", "extras (rembg's SAM prompts) is not supported")
    background = parse_colour(bgc) if bgc is not None and not om else None
    data = await read_upload(file, pipeline.settings.max_upload_bytes, "file")
    image, saliency, _ = await pipeline.saliency_of(data)

    def render() -> bytes:
        mask = to_uint8(saliency)
        return cutout_png(image, post_process(mask) if ppm else mask, om, background)

    png = await asyncio.get_running_loop().run_in_executor(pipeline.pool, render)
    return Response(png, media_type="image/png", headers={"X-Model": name})


@router.get("/remove", include_in_schema=False)
async def remove_by_url() -> Response:
    """rembg's ``GET /api/remove?url=`` is refused: the server never fetches URLs."""
    raise ServiceError(
        405, "method_not_allowed", "this server never fetches URLs: POST the image file to /api/remove as 'file'",
        {"Allow": "POST"},
    )  # fmt: skip
