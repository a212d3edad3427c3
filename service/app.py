"""The FastAPI application: ``create_app(settings)`` builds one self-contained instance (own metrics registry)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.errors import ServiceError
from service.kserve import ProtocolError
from service.metrics import ServiceMetrics
from service.middleware import GuardMiddleware, RequestContextMiddleware, protocol_of
from service.repository import ModelRepository
from service.routers import rembg, saliency, system, v2
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger(__name__)

# Multipart framing around the file: boundaries, part headers and the option fields.
MULTIPART_SLACK_BYTES = 64 * 1024
# Anyone may call these (probes, scrapers, the demo page and the API docs); everything else needs the API key.
PUBLIC_PATHS = frozenset(
    {
        "/",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/redoc",
        "/openapi.json",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs/oauth2-redirect",
    }
)
DOCS_ASSETS = "/docs-assets"


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(DOCS_ASSETS + "/")


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "upload_too_large"}


def error_body(path: str, code: str, message: str) -> dict:
    """The error shape of the route's protocol: ``{"error": "..."}`` under ``/v2`` (KServe v2), else
    ``{"error": {"code", "message"}}``."""
    if protocol_of(path) == "kserve_v2":
        return {"error": message}
    return {"error": {"code": code, "message": message}}


def _install_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    def answer(request: Request, exc: ServiceError) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        body = error_body(request.url.path, exc.code, exc.message)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return answer(request, exc)

    @app.exception_handler(ProtocolError)
    async def protocol_error(request: Request, exc: ProtocolError) -> JSONResponse:
        return answer(request, ServiceError(exc.status, "invalid_inference_request", exc.message))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()
        )
        return answer(request, ServiceError(422, "invalid_request", problems or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI turns any failure while parsing the body into a 400; the byte limit raised there keeps its own answer.
        if isinstance(exc.__cause__, ServiceError):
            return answer(request, exc.__cause__)
        code = _HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return answer(request, ServiceError(exc.status_code, code, str(exc.detail), dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        message = "internal server error; the request id identifies it in the logs"
        return answer(request, ServiceError(500, "internal_error", message))


def create_app(settings: Settings | None = None, repository: ModelRepository | None = None) -> FastAPI:
    """A ready-to-serve app; the models load and warm up in its lifespan unless ``repository`` is given.

    Args:
        settings: defaults to reading the environment.
        repository: already loaded models to serve.
    """
    settings = settings or Settings()
    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics, repository)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    # The API docs' JavaScript and CSS come from the installed fastapi-offline wheel, not a CDN.
    app = FastAPIOffline(
        title="Saliency service",
        description=(
            "Salient object detection with the PiCANet, CLASS and ARN models side by side: saliency maps, "
            "pixel-wise attention, model comparison."
        ),
        version=__version__,
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
    )
    app.state.service = state
    _install_error_handlers(app, metrics)
    app.include_router(saliency.router)
    app.include_router(system.router)
    app.include_router(v2.router)
    app.include_router(rembg.router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID"],
        )

    def body_limit(path: str) -> int:
        several = path.endswith(("/batch", "/infer"))
        images = settings.max_batch_images if several else 1
        return settings.max_upload_bytes * images + MULTIPART_SLACK_BYTES

    app.add_middleware(
        GuardMiddleware,
        metrics=metrics,
        api_keys=settings.api_keys,
        public=is_public,
        admission=state.admission,
        body_limit=body_limit,
        body_timeout_s=settings.body_timeout_s,
        error_body=error_body,
    )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, body_limit=body_limit, error_body=error_body)
    return app
