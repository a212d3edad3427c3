"""Response models of every route (they are also the OpenAPI schema at ``/docs``)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. corrupt_image")
    message: str


class ErrorResponse(BaseModel):
    """Every error: ``{"error": {"code", "message"}}``."""

    error: ErrorBody


class ModelRef(BaseModel):
    name: str
    version: str
    variant: str


class ImageSize(BaseModel):
    width: int
    height: int


class Timings(BaseModel):
    """Milliseconds spent per stage for one image."""

    decode: float = Field(description="decoding and preprocessing")
    queue: float = Field(description="waiting for a batch to start")
    inference: float = Field(description="ONNX Runtime time of the whole batch")
    postprocess: float = Field(description="resizing maps, placing attention, PNG encoding")


class AttentionWeight(BaseModel):
    x: float = Field(description="image x of the centre of the weight's feature cell")
    y: float = Field(description="image y of the centre of the weight's feature cell")
    weight: float
    inside: bool = Field(description="false for local-window cells past the feature map border (zero padding)")


class AttentionMap(BaseModel):
    output: str = Field(description="ONNX output name, e.g. attn_global")
    kind: str = Field(description="global, local or spatial")
    normalization: str
    grid: int
    feature_cell: tuple[int, int] = Field(description="(row, col) of the query point on this output's feature map")
    heatmap_png: str = Field(
        description="base64 greyscale PNG at the image size scaled to fit max_attention_side, 255 at the largest weight"
    )
    weights: list[AttentionWeight]


class AttentionPoint(BaseModel):
    x: float
    y: float
    maps: list[AttentionMap]


class ImageResult(BaseModel):
    """The answer for one image; maps are base64 PNG at ``map_size`` (the original size unless it is over
    ``max_side``); attention query points and weight centres are in the original image's pixels."""

    image: ImageSize
    map_size: ImageSize = Field(
        description="size of the returned maps: the image's, scaled down to fit max_side (server max_map_side)"
    )
    saliency_png: str | None = Field(default=None, description="base64 greyscale PNG, 255 = salient")
    overlay_png: str | None = Field(default=None, description="base64 RGB PNG of the image tinted by saliency")
    attention: list[AttentionPoint] | None = None
    batch_size: int = Field(description="how many images shared this image's inference batch")
    timings: Timings


class SaliencyResponse(ImageResult):
    request_id: str
    model: ModelRef


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageResult] = Field(description="one per uploaded image, in upload order")


class OutputInfo(BaseModel):
    name: str
    kind: str
    shape: list[int | str]


class ModelInfo(BaseModel):
    name: str
    version: str
    architecture: str
    description: str
    bundle: str = Field(description="the bundle's folder name (not its path on the server)")
    variant: str
    variants: list[str]
    provider: str = Field(description="the execution provider the session really runs on")
    providers: list[str]
    input_size: int
    outputs: list[OutputInfo]
    options: list[str] = Field(description="values the outputs option accepts for this model")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    detail: str
