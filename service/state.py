"""What one app instance holds: settings, metrics, and (after startup) the model repository with a batcher and
pipeline per model."""

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
from service.metrics import ServiceMetrics
from service.pipeline import Pipeline
from service.repository import ModelRepository
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
    """Lifecycle of the models behind one app: load → warm up → ready → draining → closed.

    Each model of the repository gets its own dynamic batcher and pipeline (ONNX Runtime sessions run one batch at a
    time each); they share the imaging threads and the in-flight budget. Draining begins at the server's shutdown
    signal (:meth:`begin_drain`): readiness turns false and new requests are refused with 503 before any work, while
    admitted ones run to their end; :meth:`stop` then stops the batchers and the pools.

    Args:
        settings: validated settings.
        metrics: the app's metrics.
        repository: already loaded models (``python -m service`` loads them before starting uvicorn so a bad
            bundle fails fast); ``None`` loads them at startup.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics, repository: ModelRepository | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.repository = repository
        self.ready = False
        self.draining = False
        self.admission = Admission(
            settings.max_inflight_requests, settings.max_inflight_bytes, settings.max_inflight_pixels
        )
        self._pools: list[ThreadPoolExecutor] = []

    async def start(self) -> None:
        """Load (if needed) and warm up the models, then start a batcher per model; ``ready`` turns true at the end."""
        s = self.settings
        if self.repository is None:
            self.repository = await asyncio.to_thread(ModelRepository.load, s)
        pool = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="imaging")
        # One thread for large images and for grouping: at most one is decoded or post-processed at a time, beside
        # the small ones, and at a lower CPU priority, so on busy cores the small requests' threads run first.
        heavy_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imaging-heavy", initializer=_lower_priority)
        self._pools = [pool, heavy_pool]
        for model in self.repository.models:
            info = model.engine.info
            self.metrics.model_info.labels(model.name, info.manifest.version, info.variant, info.provider).set(1)
            model.batcher = Batcher(
                model.engine, self.metrics, s.max_batch_size, s.max_delay_ms, s.queue_size, model=model.name
            )
            model.batcher.start()
            model.pipeline = Pipeline(s, model.engine, model.batcher, self.metrics, pool, heavy_pool, self.admission)
            log.info("ready: %s %s (%s) on %s", model.name, info.manifest.version, info.variant, info.provider)
        grouper = next((m.pipeline for m in self.repository.models if m.engine.manifest.grouping), None)
        for model in self.repository.models:
            if model.pipeline is not None and model.engine.manifest.grouping is None:
                model.pipeline.grouper = grouper
        self.ready = not self.draining

    def begin_drain(self) -> None:
        """Refuse new requests (503, readiness false) and let admitted ones finish; called at SIGTERM.

        Only sets flags: it runs inside a signal handler, where logging could deadlock.
        """
        self.draining = True
        self.ready = False

    async def stop(self) -> None:
        """Stop taking work, finish what is queued (up to ``drain_timeout_s``), release threads."""
        self.begin_drain()
        models = self.repository.models if self.repository is not None else []
        await asyncio.gather(*(m.batcher.drain(self.settings.drain_timeout_s) for m in models if m.batcher))
        # Answers that left the batchers still need the imaging pool for post-processing.
        deadline = time.perf_counter() + self.settings.drain_timeout_s
        while any(m.pipeline and m.pipeline.active for m in models) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        for pool in self._pools:
            pool.shutdown(wait=True)
        if self.repository is not None:
            self.repository.close()
        log.info("stopped")
