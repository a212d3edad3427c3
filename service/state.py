"""What one app instance holds: settings, metrics, and (after startup) the engine, batcher and pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from service.admission import Admission
from service.batcher import Batcher
from service.engine import Engine
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline
from service.settings import Settings

log = logging.getLogger(__name__)


HEAVY_THREAD_NICE = 10


def _lower_priority() -> None:
    """Raise the calling thread's nice value by ``HEAVY_THREAD_NICE`` (Linux schedules each thread on its own;
    raising nice needs no privilege)."""
    with contextlib.suppress(OSError, AttributeError):
        thread = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + HEAVY_THREAD_NICE)


class ServiceState:
    """Lifecycle of the model behind one app: load → warm up → ready → draining → closed.

    Draining begins at the server's shutdown signal (:meth:`begin_drain`): readiness turns false and new requests
    are refused with 503 before any work, while admitted ones run to their end; :meth:`stop` then stops the batcher
    and the pools.

    Args:
        settings: validated settings.
        metrics: the app's metrics.
        engine: an already loaded engine (``python -m service`` loads it before starting uvicorn so a bad bundle
            fails fast); ``None`` loads it at startup.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics, engine: Engine | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.engine = engine
        self.pipeline: Pipeline | None = None
        self.ready = False
        self.draining = False
        self.admission = Admission(
            settings.max_inflight_requests, settings.max_inflight_bytes, settings.max_inflight_pixels
        )
        self._batcher: Batcher | None = None
        self._pools: list[ThreadPoolExecutor] = []

    def _load(self) -> Engine:
        s = self.settings
        engine = self.engine or Engine(**s.engine_kwargs())
        # One batch-1 run pays the first-run costs (allocations, kernel selection); a larger warm-up batch was
        # measured to cost only its compute, which would delay readiness for nothing.
        engine.warm_up()
        return engine

    async def start(self) -> None:
        """Load (if needed) and warm up the model, then start the batcher; ``ready`` turns true at the end."""
        s = self.settings
        self.engine = await asyncio.to_thread(self._load)
        info = self.engine.info
        self.metrics.model_info.labels(info.manifest.name, info.manifest.version, info.variant, info.provider).set(1)
        self._batcher = Batcher(self.engine, self.metrics, s.max_batch_size, s.max_delay_ms, s.queue_size)
        self._batcher.start()
        pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="imaging")
        # One thread for large images: at most one is decoded or post-processed at a time, beside the small ones,
        # and at a lower CPU priority, so on busy cores the small requests' threads run first.
        heavy_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imaging-heavy", initializer=_lower_priority)
        self._pools = [pool, heavy_pool]
        self.pipeline = Pipeline(s, self.engine, self._batcher, self.metrics, pool, heavy_pool, self.admission)
        self.ready = not self.draining
        log.info("ready: %s %s (%s) on %s", info.manifest.name, info.manifest.version, info.variant, info.provider)

    def begin_drain(self) -> None:
        """Refuse new requests (503, readiness false) and let admitted ones finish; called at SIGTERM.

        Only sets flags: it runs inside a signal handler, where logging could deadlock.
        """
        self.draining = True
        self.ready = False

    async def stop(self) -> None:
        """Stop taking work, finish what is queued (up to ``drain_timeout_s``), release threads."""
        self.begin_drain()
        if self._batcher is not None:
            await self._batcher.drain(self.settings.drain_timeout_s)
        # Answers that left the batcher still need the imaging pool for post-processing.
        deadline = time.perf_counter() + self.settings.drain_timeout_s
        while self.pipeline is not None and self.pipeline.active and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for pool in self._pools:
            pool.shutdown(wait=True)
        if self.engine is not None:
            self.engine.close()
        log.info("stopped")
