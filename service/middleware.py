"""Pure ASGI middleware: request id, request metrics, access log and the request-body byte limit."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ServiceError
from service.logs import request_id_var
from service.metrics import ServiceMetrics

log = logging.getLogger("service.access")

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def protocol_of(path: str) -> str:
    """The ``protocol`` label of a request: ``kserve_v2`` under /v2, ``rembg`` for /api/*, else ``saliency``."""
    if path == "/v2" or path.startswith("/v2/"):
        return "kserve_v2"
    if path.startswith("/api/"):
        return "rembg"
    return "saliency"


class RequestContextMiddleware:
    """Gives each HTTP request an id (the client's ``X-Request-ID`` when sane), returns it as a header, counts
    requests by route template and status, times them, and refuses bodies over the limit.

    Args:
        app: the wrapped ASGI app.
        metrics: request counters and histograms.
        body_limit: ``path -> max body bytes``; bodies announced larger get 413 before anything is read, and
            chunked bodies that grow past it are cut off with 413.
        error_body: ``(path, code, message) -> JSON body`` of a refusal, in the protocol of the path.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        body_limit: Callable[[str], int],
        error_body: Callable[[str, str, str], dict],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.body_limit = body_limit
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CLIENT_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        status = {"code": 500}
        start = time.perf_counter()
        self.metrics.inflight.inc()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        limit = self.body_limit(scope["path"])
        received = {"bytes": 0}

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received["bytes"] += len(message.get("body", b""))
                if received["bytes"] > limit:
                    raise ServiceError(413, "upload_too_large", f"request body over the {limit}-byte limit")
            return message

        try:
            announced = headers.get(b"content-length", b"0")
            if announced.isdigit() and int(announced) > limit:
                message = f"body of {int(announced)} bytes; limit {limit}"
                await self._refuse_too_large(send_with_id, self.error_body(scope["path"], "upload_too_large", message))
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.inflight.dec()
            protocol = protocol_of(scope["path"])
            self.metrics.requests.labels(path, scope["method"], str(status["code"]), protocol).inc()
            self.metrics.request_latency.labels(path, protocol).observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status["code"],
                elapsed * 1e3,
                extra={"fields": {"status": status["code"], "ms": round(elapsed * 1e3, 2), "route": path}},
            )
            request_id_var.reset(token)

    async def _refuse_too_large(self, send: Send, error: dict) -> None:
        self.metrics.errors.labels("upload_too_large").inc()
        body = json.dumps(error).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
