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


class ImageAttentionMap(BaseModel):
    """One attention output summed up over the whole image: where the model looked."""

    output: str = Field(description="ONNX output name, e.g. attn_global")
    kind: str = Field(description="global, local or spatial")
    summary: str = Field(
        description="received (global: mean weight each location gets from every pixel), spread (local: mean "
        "distance in feature cells from a pixel to what it weighs) or map (spatial: the map itself)"
    )
    peak: float = Field(description="the largest value of the summary (255 in the heatmap before it is resized)")
    heatmap_png: str = Field(description="base64 greyscale PNG at the image size scaled to fit max_attention_side")


class AttentionPoint(BaseModel):
    x: float
    y: float
    maps: list[AttentionMap]


class GroupMember(BaseModel):
    """One salient instance."""

    box: tuple[int, int, int, int] = Field(
        description="x0, y0, x1, y1 in the upload's pixels: x0, y0 inclusive, x1, y1 exclusive"
    )
    score: float = Field(description="how sure the model is that the box holds an object (RPN objectness)")
    mask: str = Field(description="base64 greyscale PNG of the box (x1-x0 by y1-y0 pixels), 255 = the object")


class CoSalientGroup(BaseModel):
    """Salient instances of the same kind of thing."""

    id: int
    cohesion: float = Field(description="mean pairwise cosine similarity of the members' instance vectors (1 = alike)")
    members: list[GroupMember] = Field(description="two or more, most confident first")


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
    attention_maps: list[ImageAttentionMap] | None = Field(
        default=None, description="with outputs=attention: one image-level map per attention output"
    )
    groups: list[CoSalientGroup] | None = Field(
        default=None, description="with outputs=groups: co-salient groups, most cohesive first ([] when none)"
    )
    singletons: list[GroupMember] | None = Field(
        default=None, description="with outputs=groups: salient instances that belong to no group"
    )
    cosaliency: str | None = Field(
        default=None,
        description="with outputs=groups: base64 greyscale PNG at the upload's size, the co-saliency map inside the "
        "groups' boxes (black when there is no group)",
    )
    groups_model: ModelRef | None = Field(
        default=None, description="with outputs=groups: the co-saliency model that found the groups"
    )
    batch_size: int = Field(description="how many images shared this image's inference batch")
    timings: Timings


class SaliencyResponse(ImageResult):
    request_id: str
    model: ModelRef


class BatchResponse(BaseModel):
    request_id: str
    model: ModelRef
    results: list[ImageResult] = Field(description="one per uploaded image, in upload order")


class ComparedMap(BaseModel):
    model: ModelRef
    saliency_png: str = Field(description="base64 greyscale PNG at map_size, 255 = salient")


class Agreement(BaseModel):
    """How alike two models' maps are on this image."""

    a: str
    b: str
    mae: float = Field(description="mean absolute difference of the two maps in [0, 1]")
    iou: float = Field(description="intersection over union of the maps thresholded at 0.5 (1 when both are empty)")


class CompareResponse(BaseModel):
    request_id: str
    image: ImageSize
    map_size: ImageSize
    maps: list[ComparedMap] = Field(description="one per model, in the order asked")
    agreement: list[Agreement] = Field(description="every pair of the models asked")


class OutputInfo(BaseModel):
    name: str
    kind: str
    shape: list[int | str]


class ModelInfo(BaseModel):
    name: str = Field(description="what model= takes")
    default: bool = Field(description="whether requests without model= (or with model=default) get this model")
    ready: bool
    version: str
    paper: str
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
    attention_kinds: list[str] = Field(description="kinds of the attention maps it answers (global, local, spatial)")
    accuracy: dict[str, dict[str, float]] = Field(
        description="what the export measured on the served variant: dataset -> metric -> value"
    )
    training_data: list[str]
    rss_mib: float = Field(description="resident memory the server grew by when it loaded and warmed up this model")


class ModelsResponse(BaseModel):
    default: str | None = Field(description="the default model's name (null while loading)")
    rss_mib: float = Field(description="the server process's resident memory now")
    models: list[ModelInfo]


class HealthResponse(BaseModel):
    status: str


class ReadyResponse(BaseModel):
    ready: bool
    detail: str
    models: dict[str, bool] = Field(default_factory=dict, description="each configured model's readiness")
