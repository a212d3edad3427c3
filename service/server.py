"""The HTTP server around the app: uvicorn with h11 and the connection-level limits, and a drain at SIGTERM.

- Request head: at most ``max_header_bytes`` (a larger head gets 431 and the connection is closed), and complete
  within ``header_timeout_s`` of the connection opening or of the previous response (a slowloris connection is
  closed). h11 is used instead of httptools: its parser bounds what it buffers too.
- Connections: at most ``max_connections`` at once (uvicorn's ``limit_concurrency``; more are answered 503).
- SIGTERM/SIGINT: the app starts draining at once (readiness false, new requests 503 before any work), the listening
  socket closes, admitted requests finish within ``drain_timeout_s`` (at least the request deadline), the lifespan
  shutdown stops the batcher, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from service.settings import Settings

log = logging.getLogger(__name__)


def guarded_h11_protocol(timeout_s: float, max_head_bytes: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol with two limits on the request head: it must be complete within ``timeout_s``
    (else the connection is closed) and at most ``max_head_bytes`` long (else 431 and the connection is closed).
    h11's own ``max_incomplete_event_size`` only counts a head still incomplete after a read, so a large head that
    arrives in one read would pass it."""
    body = json.dumps({"error": {"code": "header_too_large", "message": f"request head over {max_head_bytes} bytes"}})
    too_large = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\nconnection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n{body}".encode()
    )

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0

        def _arm_head_timer(self) -> None:
            self._cancel_head_timer()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(timeout_s, self._head_timed_out)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection that sent no complete request head in %.0f s", timeout_s)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None:  # still reading a head: count it up to its blank line
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end + 4
                if self._head_bytes > max_head_bytes:
                    log.info("refusing a request head over %d bytes", max_head_bytes)
                    self._cancel_head_timer()
                    self.transport.write(too_large)
                    self.transport.close()
                    return
            cycle = self.cycle
            super().data_received(data)
            if self.cycle is not cycle:  # a request head was parsed: the request has begun
                self._cancel_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():  # a kept-alive connection owes the next head in time too
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class DrainingServer(uvicorn.Server):
    """uvicorn's server that tells the app to drain at the first shutdown signal and exits 0 once drained
    (uvicorn re-raises the signal after shutdown, which would end the process "killed by SIGTERM")."""

    def __init__(self, config: uvicorn.Config, begin_drain: Callable[[], None]) -> None:
        super().__init__(config)
        self._begin_drain = begin_drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._begin_drain()
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list | None = None) -> None:
        log.info("shutdown signal: draining admitted requests (up to %.0f s)", self.config.timeout_graceful_shutdown)
        await super().shutdown(sockets)


def serve(app: FastAPI, settings: Settings) -> None:
    """Run ``app`` until a shutdown signal, then drain it."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        workers=1,  # one process: the batcher needs every request to form batches; ORT uses the cores
        http=guarded_h11_protocol(settings.header_timeout_s, settings.max_header_bytes),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=settings.drain_timeout_s,
        log_config=None,
        access_log=False,
    )
    DrainingServer(config, app.state.service.begin_drain).run()
