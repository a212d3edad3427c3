"""Pure ASGI middleware: request id, metrics, access log and the body byte limit (``RequestContextMiddleware``);
API key, admission and the body read timeout, all before the body is read (``GuardMiddleware``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import Admission
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
                self.metrics.errors.labels("upload_too_large").inc()
                await _answer(send_with_id, 413, self.error_body(scope["path"], "upload_too_large", message))
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.inflight.dec()
            protocol = protocol_of(scope["path"])
            model = scope["state"].get("model", "")  # set by the route once it knows which model serves it
            self.metrics.requests.labels(path, scope["method"], str(status["code"]), protocol, model).inc()
            groups = "true" if scope["state"].get("groups") else "false"  # set by parse_options
            self.metrics.request_latency.labels(path, protocol, groups).observe(elapsed)
            log.info(
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status["code"],
                elapsed * 1e3,
                extra={"fields": {"status": status["code"], "ms": round(elapsed * 1e3, 2), "route": path}},
            )
            request_id_var.reset(token)


# An unauthenticated client's body is dropped unread up to this much, so a client with a wrong key still gets its 401.
UNAUTHORIZED_DISCARD_BYTES = 1024 * 1024


def authorized(authorization: str, keys: Collection[str]) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <one of keys>`` (always true when there are no keys)."""
    if not keys:
        return True
    scheme, _, token = authorization.partition(" ")
    # compare_digest against every key: the time taken does not say which key (or how much of one) matched.
    matched = [secrets.compare_digest(token.strip().encode(), key.encode()) for key in keys]
    return scheme.lower() == "bearer" and any(matched)


class GuardMiddleware:
    """What a request must pass before any of its body is read, and the pace its body must keep.

    - API key: protected paths answer 401 at once (``Authorization: Bearer <key>``), before the body is read.
    - Admission: a request with a body is admitted against the in-flight count and byte budget by its
      ``Content-Length`` (or the path's body limit when chunked): 503 + ``Retry-After`` when full, without reading.
    - Body read timeout: each chunk of the body must arrive within ``body_timeout_s``, else 408.

    Args:
        app: the wrapped ASGI app.
        api_keys: accepted keys; empty switches authentication off.
        public: ``path -> bool``, paths anyone may call (health, metrics, docs, demo page).
        admission: the shared budget.
        body_limit: ``path -> max body bytes`` (the reservation of a chunked body).
        body_timeout_s: longest wait for the next body chunk.
        error_body: ``(path, code, message) -> JSON body`` of a refusal, in the protocol of the path.
        metrics: where refusals are counted.
    """

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics,
        api_keys: Collection[str],
        public: Callable[[str], bool],
        admission: Admission,
        body_limit: Callable[[str], int],
        body_timeout_s: float,
        error_body: Callable[[str, str, str], dict],
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.api_keys = list(api_keys)
        self.public = public
        self.admission = admission
        self.body_limit = body_limit
        self.body_timeout_s = body_timeout_s
        self.error_body = error_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or self.public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        path = scope["path"]
        if not authorized(headers.get(b"authorization", b"").decode("latin-1"), self.api_keys):
            message = "missing or wrong API key: send Authorization: Bearer <key>"
            refusal = ServiceError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})
            await self._refuse(scope, receive, send, refusal, UNAUTHORIZED_DISCARD_BYTES)
            return
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        announced = headers.get(b"content-length", b"")
        reserved = int(announced) if announced.isdigit() else self.body_limit(path)
        try:
            self.admission.admit_request(reserved)
        except ServiceError as exc:  # 503 now (the body is dropped unread), or 413 (never fits: not even dropped)
            await self._refuse(scope, receive, send, exc, self.body_limit(path) if exc.status == 503 else 0)
            return
        body_done = False

        async def paced_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except TimeoutError:
                raise ServiceError(
                    408, "body_timeout", f"no request body data for {self.body_timeout_s:g} s; send the body promptly"
                ) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        try:
            await self.app(scope, paced_receive, send)
        finally:
            self.admission.release_request(reserved)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, exc: ServiceError, discard: int) -> None:
        """Answer ``exc`` without the app seeing the request, before reading any of its body.

        The status line and headers go out first. A client still sending its body would then see the connection
        reset instead of the answer (uvicorn closes a connection whose request body is unread), so up to
        ``discard`` bytes of the body are received and dropped, never stored, before the answer's body completes
        it; a client that sent ``Expect: 100-continue`` has sent nothing and is answered at once.
        """
        self.metrics.errors.labels(exc.code).inc()
        body, start = _refusal(exc.status, self.error_body(scope["path"], exc.code, exc.message), exc.headers)
        await send(start)
        if discard and dict(scope["headers"]).get(b"expect", b"").lower() != b"100-continue":
            dropped = 0
            with contextlib.suppress(TimeoutError):
                while dropped <= discard:
                    message = await asyncio.wait_for(receive(), self.body_timeout_s)
                    dropped += len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body", False):
                        break
        await send({"type": "http.response.body", "body": body})


def _refusal(status: int, error: dict, extra_headers: dict[str, str] | None) -> tuple[bytes, Message]:
    body = json.dumps(error).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra_headers or {}).items()]
    return body, {"type": "http.response.start", "status": status, "headers": headers}


async def _answer(send: Send, status: int, error: dict, extra_headers: dict[str, str] | None = None) -> None:
    body, start = _refusal(status, error, extra_headers)
    await send(start)
    await send({"type": "http.response.body", "body": body})
