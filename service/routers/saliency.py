"""``POST /saliency`` and ``POST /saliency/batch``."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, File, Request, UploadFile
from fastapi.responses import Response

from service.deps import State, parse_options, read_upload, ready_pipeline, require_single_field
from service.errors import ServiceError
from service.pipeline import Options, Pipeline
from service.schemas import BatchResponse, ErrorResponse, ImageResult, ModelRef, SaliencyResponse

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


def _model_ref(pipeline: Pipeline) -> ModelRef:
    info = pipeline.engine.info
    return ModelRef(name=info.manifest.name, version=info.manifest.version, variant=info.variant)


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
    return SaliencyResponse(request_id=request.state.request_id, model=_model_ref(pipeline), **result.model_dump())


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
        model=_model_ref(pipeline),
        results=results,
    )
