"""FastAPI dependencies: app state, readiness, request options (the API key is checked by ``GuardMiddleware``)."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import Depends, Header, Query, Request, UploadFile

from service.errors import ServiceError
from service.pipeline import MAX_POINTS, OUTPUT_OPTIONS, Options, Pipeline
from service.state import ServiceState

POINTS_HELP = "attention query points in image pixels, 'x,y;x,y' (default: the most and least salient pixel)"


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


State = Annotated[ServiceState, Depends(get_state)]


async def read_upload(upload: UploadFile, limit: int, what: str) -> bytes:
    """An uploaded file's bytes, 413 past ``limit``: one byte past it is read, never the whole of a huge file."""
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(413, "upload_too_large", f"{what} is over the {limit}-byte limit")
    return data


async def require_single_field(request: Request, field: str, hint: str = "send one image per request") -> None:
    """422 when the multipart form repeats ``field`` (the framework would silently keep the last one)."""
    if len((await request.form()).getlist(field)) > 1:
        raise ServiceError(422, "invalid_request", f"several {field} fields: {hint}")


MODEL_HELP = "the model's name (see GET /models); default: the server's default model"


def served_pipeline(state: ServiceState, request: Request, model: str | None) -> Pipeline:
    """The pipeline of the named model (``None`` or ``default``: the default); 422 for a name not served, 503 while
    the models load or the server drains. Labels the request's metrics with the model's name."""
    repository = state.repository
    served = repository.find(model) if repository is not None else None
    if repository is not None and served is None:
        raise ServiceError(422, "unknown_model", repository.unknown_message(str(model)))
    if not state.ready or served is None or served.pipeline is None:
        raise ServiceError(
            503, "not_ready", "the models are not loaded yet or the server is stopping", {"Retry-After": "1"}
        )
    request.state.model = served.name
    return served.pipeline


def ready_pipeline(
    state: State, request: Request, model: Annotated[str | None, Query(description=MODEL_HELP)] = None
) -> Pipeline:
    """The pipeline of the model the ``model`` query parameter names (see :func:`served_pipeline`)."""
    return served_pipeline(state, request, model)


def _parse_points(text: str) -> list[tuple[float, float]]:
    points = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        try:
            x_text, y_text = part.split(",")
            point = (float(x_text), float(y_text))
        except ValueError as exc:
            raise ServiceError(422, "invalid_option", f"point {part!r} is not 'x,y' (e.g. points=10,20;30,40)") from exc
        if not all(math.isfinite(v) for v in point):
            raise ServiceError(422, "invalid_option", f"point {part!r} is not finite")
        points.append(point)
    if not points:
        raise ServiceError(422, "invalid_option", "points is empty; give 'x,y;x,y' or leave it out")
    if len(points) > MAX_POINTS:
        raise ServiceError(422, "invalid_option", f"{len(points)} points; at most {MAX_POINTS}")
    return points


def parse_options(
    request: Request,
    pipeline: Annotated[Pipeline, Depends(ready_pipeline)],
    outputs: Annotated[str, Query(description="comma list of saliency, attention, overlay, groups")] = "saliency",
    points: Annotated[str | None, Query(description=POINTS_HELP)] = None,
    format: Annotated[Literal["json", "png"] | None, Query(description="json (default) or png")] = None,
    max_side: Annotated[
        int | None, Query(description="longest side of the returned maps (default: the server's)")
    ] = None,
    accept: Annotated[str | None, Header()] = None,
) -> Options:
    """The request's options, validated against the chosen model (422 on anything it cannot do). Labels the
    request's latency with whether it asked for groups, which take several times as long as maps."""
    wanted = frozenset(o.strip() for o in outputs.split(",") if o.strip())
    unknown = sorted(wanted - set(OUTPUT_OPTIONS))
    if unknown or not wanted:
        raise ServiceError(422, "invalid_option", f"unknown outputs {unknown}: choose from {', '.join(OUTPUT_OPTIONS)}")
    accepts = accept or ""
    png = format == "png" or (format is None and "image/png" in accepts and "application/json" not in accepts)
    if png and wanted != {"saliency"}:
        raise ServiceError(
            422, "invalid_option", "format=png returns the saliency map only; use JSON for other outputs"
        )
    parsed_points = _parse_points(points) if points is not None else None
    options = Options(outputs=wanted, points=parsed_points, png=png, max_side=max_side)
    pipeline.check_options(options)
    request.state.groups = "groups" in wanted
    return options
