"""Health, readiness, models, metrics and the demo page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, JSONResponse, Response

from service.deps import State
from service.schemas import HealthResponse, ModelInfo, ModelsResponse, OutputInfo, ReadyResponse

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(tags=["system"])


@router.get("/healthz", response_model=HealthResponse)
async def healthz() -> HealthResponse:
    """The process is up (liveness)."""
    return HealthResponse(status="ok")


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(state: State) -> ReadyResponse | JSONResponse:
    """Ready only once the model is loaded and a warm-up inference ran (readiness); 503 before and while draining."""
    if state.ready:
        return ReadyResponse(ready=True, detail="model loaded and warmed up")
    body = ReadyResponse(ready=False, detail="loading or stopping")
    return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})


@router.get("/models", response_model=ModelsResponse)
async def list_models(state: State) -> ModelsResponse:
    """The loaded bundle: variants, the variant and execution provider in use, outputs."""
    if state.engine is None or state.pipeline is None:
        return ModelsResponse(models=[])
    info = state.engine.info
    manifest = info.manifest
    return ModelsResponse(
        models=[
            ModelInfo(
                name=manifest.name,
                version=manifest.version,
                architecture=manifest.architecture,
                description=manifest.description,
                bundle=info.bundle_dir.name,
                variant=info.variant,
                variants=sorted(manifest.variants),
                provider=info.provider,
                providers=info.providers,
                input_size=manifest.preprocess.input_size,
                outputs=[OutputInfo(name=o.name, kind=o.kind, shape=o.shape) for o in manifest.outputs],
                options=state.pipeline.available_outputs(),
            )
        ]
    )


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(state: State) -> Response:
    """Prometheus metrics in the text exposition format."""
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.get("/", response_class=FileResponse, include_in_schema=False)
async def demo_page() -> FileResponse:
    """The demo page: upload an image, see the overlay, click a pixel to see its attention."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
