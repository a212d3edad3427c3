"""``POST /saliency``, ``POST /saliency/batch`` and ``POST /saliency/compare``."""

from __future__ import annotations

import asyncio
import base64
import itertools
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response

from service.deps import State, parse_options, read_upload, ready_pipeline, require_single_field, served_pipeline
from service.errors import ServiceError
from service.imaging import encode_png, to_uint8
from service.pipeline import Options, Pipeline
from service.schemas import (
    Agreement,
    BatchResponse,
    ComparedMap,
    CompareResponse,
    ErrorResponse,
    ImageResult,
    ImageSize,
    SaliencyResponse,
)

ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "corrupt or undecodable image",
        401: "API key missing or wrong",
        413: "upload over the byte or pixel limit",
        415: "not JPEG, PNG, WebP, BMP, TIFF or GIF",
        422: "bad options",
        503: "queue full or not ready (see Retry-After)",
        504: "no result in time",
    }.items()
}

router = APIRouter(tags=["saliency"], responses=ERRORS)

PipelineDep = Annotated[Pipeline, Depends(ready_pipeline)]
OptionsDep = Annotated[Options, Depends(parse_options)]


@router.post(
    "/saliency",
    response_model=SaliencyResponse,
    responses={200: {"content": {"image/png": {}}, "description": "JSON, or the saliency PNG with format=png"}},
)
async def saliency(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)")],
    pipeline: PipelineDep,
    options: OptionsDep,
) -> SaliencyResponse | Response:
    """Saliency map (and optionally attention at query points, an overlay) of one image."""
    await require_single_field(request, "image", "send one, or use /saliency/batch")
    data = await read_upload(image, pipeline.settings.max_upload_bytes, "image")
    if options.png:
        return Response(content=await pipeline.run_png(data, options), media_type="image/png")
    result = await pipeline.run(data, options)
    return SaliencyResponse(request_id=request.state.request_id, model=pipeline.model_ref(), **result.model_dump())


@router.post("/saliency/batch", response_model=BatchResponse)
async def saliency_batch(
    request: Request,
    images: Annotated[list[UploadFile], File(description="several images; results come back in the same order")],
    pipeline: PipelineDep,
    options: OptionsDep,
    state: State,
) -> BatchResponse:
    """Several images in one request; they join the dynamic batches like single requests do."""
    limit = state.settings.max_batch_images
    if len(images) > limit:
        raise ServiceError(413, "too_many_images", f"{len(images)} images; at most {limit} per batch request")
    if options.png:
        raise ServiceError(422, "invalid_option", "format=png answers one image; use JSON for /saliency/batch")
    datas = [await read_upload(f, pipeline.settings.max_upload_bytes, f"images[{i}]") for i, f in enumerate(images)]

    async def one(index: int, data: bytes) -> ImageResult:
        try:
            return await pipeline.run(data, options)
        except ServiceError as exc:
            raise ServiceError(exc.status, exc.code, f"images[{index}]: {exc.message}", exc.headers) from exc

    tasks = [asyncio.create_task(one(i, data)) for i, data in enumerate(datas)]
    try:
        results = await asyncio.gather(*tasks)
    finally:
        for task in tasks:  # one image failed: the others' answers are not wanted any more
            task.cancel()
    return BatchResponse(
        request_id=request.state.request_id,
        model=pipeline.model_ref(),
        results=results,
    )


def map_agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Mean absolute difference of two maps in [0, 1] of one size, and the IoU of their 0.5-thresholded masks
    (1.0 when neither has a pixel over 0.5: both say "nothing salient")."""
    mae = float(np.abs(a - b).mean())
    fa, fb = a >= 0.5, b >= 0.5
    union = np.logical_or(fa, fb).sum()
    return mae, float(np.logical_and(fa, fb).sum() / union) if union else 1.0


@router.post("/saliency/compare", response_model=CompareResponse)
async def compare(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP, BMP, TIFF or GIF (first frame)")],
    state: State,
    models: Annotated[
        str | None, Query(description="comma list of two or more model names (default: every served model)")
    ] = None,
) -> CompareResponse:
    """Several models' saliency maps of one image, and how much each pair agrees (MAE and IoU)."""
    await require_single_field(request, "image", "compare answers one image")
    names = [m.strip() for m in models.split(",") if m.strip()] if models is not None else None
    if names is None and state.repository is not None:
        names = state.repository.names
    if names is None or len(names) < 2 or len(set(names)) < len(names):
        raise ServiceError(422, "invalid_option", f"models must name two or more different models, got {names}")
    pipelines = [served_pipeline(state, request, name) for name in names]
    request.state.model = "+".join(p.engine.manifest.name for p in pipelines)
    data = await read_upload(image, pipelines[0].settings.max_upload_bytes, "image")
    answers = await asyncio.gather(*(p.saliency_of(data) for p in pipelines))
    shown, _, original = answers[0]
    maps = [saliency for _, saliency, _ in answers]

    def render() -> list[str]:
        return [base64.b64encode(encode_png(to_uint8(m))).decode("ascii") for m in maps]

    pngs = await asyncio.get_running_loop().run_in_executor(pipelines[0].pool, render)
    refs = [p.model_ref() for p in pipelines]
    agreement = []
    for (i, a), (j, b) in itertools.combinations(enumerate(maps), 2):
        mae, iou = map_agreement(a, b)
        agreement.append(Agreement(a=refs[i].name, b=refs[j].name, mae=round(mae, 5), iou=round(iou, 5)))
    return CompareResponse(
        request_id=request.state.request_id,
        image=ImageSize(width=original[0], height=original[1]),
        map_size=ImageSize(width=shown.size[0], height=shown.size[1]),
        maps=[ComparedMap(model=ref, saliency_png=png) for ref, png in zip(refs, pngs, strict=True)],
        agreement=agreement,
    )
