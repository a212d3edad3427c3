"""Health, readiness, models, metrics and the demo page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from service.deps import State
from service.repository import ServedModel, resident_mib
from service.schemas import HealthResponse, ModelInfo, ModelsResponse, OutputInfo, ReadyResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up (liveness)."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(state: State) -> ReadyResponse | JSONResponse:
    """Ready once every configured model is loaded and warmed up (readiness); 503 before and while draining."""
    models = {m.name: m.ready and state.ready for m in state.repository.models} if state.repository else {}
    if state.ready:
        return ReadyResponse(ready=True, detail=f"{len(models)} model(s) loaded and warmed up", models=models)
    body = ReadyResponse(ready=False, detail="loading or stopping", models=models)
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})


def _model_info(model: ServedModel, default: bool, ready: bool) -> ModelInfo:
    info = model.engine.info
    manifest = info.manifest
    attention = [o.attention.kind for o in manifest.output("attention") if o.attention is not None]
    return ModelInfo(
        name=manifest.name,
        default=default,
        ready=ready,
        version=manifest.version,
        paper=manifest.paper,
        architecture=manifest.architecture,
        description=manifest.description,
        bundle=info.bundle_dir.name,
        variant=info.variant,
        variants=sorted(manifest.variants),
        provider=info.provider,
        providers=info.providers,
        input_size=manifest.preprocess.input_size,
        outputs=[OutputInfo(name=o.name, kind=o.kind, shape=o.shape) for o in manifest.outputs],
        options=model.pipeline.available_outputs() if model.pipeline else [],
        attention_kinds=sorted(set(attention)),
        accuracy=manifest.variants[info.variant].accuracy,
        training_data=manifest.training_data,
        rss_mib=round(model.rss_mib, 1),
    )


@router.get("/models", response_model=ModelsResponse)
async def list_models(state: State) -> ModelsResponse:
    """Every served model: paper, architecture, what it answers, the variant and provider in use, its accuracy."""
    repository = state.repository
    rss = round(resident_mib(), 1)
    if repository is None:
        return ModelsResponse(default=None, rss_mib=rss, models=[])
    return ModelsResponse(
        default=repository.default.name,
        rss_mib=rss,
        models=[_model_info(m, m is repository.default, m.ready and state.ready) for m in repository.models],
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: State) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def demo_page() -> FileResponse:
    """The demo page: upload an image, see the overlay, click a pixel to see its attention."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
