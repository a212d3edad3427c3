"""Dynamic batching: requests queue into micro-batches that run on the engine's inference thread.

One collector task takes the first waiting image, then gathers more until the batch is full or ``max_delay_ms``
has passed, runs the batch and hands each caller its own slice. While a batch runs, new images queue up and form
the next batch, so batches grow with load without any added delay under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from service.engine import Engine
from service.metrics import ServiceMetrics

log = logging.getLogger(__name__)


class QueueFullError(RuntimeError):
    """The bounded queue is full (or the batcher is draining); the caller should retry later."""


@dataclass(frozen=True)
class InferenceResult:
    """One image's outputs and what its trip through the batcher cost.

    Attributes:
        outputs: every model output for this image, by ONNX output name, batch axis removed.
        queue_s: seconds from submission until its batch started.
        inference_s: seconds the whole batch took in ONNX Runtime.
        batch_size: how many images shared the batch.
    """

    outputs: dict[str, np.ndarray]
    queue_s: float
    inference_s: float
    batch_size: int


@dataclass
class _Pending:
    image: np.ndarray
    future: asyncio.Future[InferenceResult]
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Bounded queue + collector task in front of an :class:`Engine`.

    Args:
        engine: the loaded model.
        metrics: where queue depth, queue wait, batch size and inference time are recorded.
        max_batch_size: most images per ONNX Runtime call.
        max_delay_ms: how long the first image of a batch waits for company.
        queue_size: most images waiting; more are refused with :class:`QueueFullError`.
        model: the ``model`` label of its metrics.
    """

    def __init__(
        self, engine: Engine, metrics: ServiceMetrics, max_batch_size: int, max_delay_ms: float, queue_size: int,
        model: str,
    ) -> None:  # fmt: skip
        self._engine = engine
        self._queue_depth = metrics.queue_depth.labels(model)
        self._queue_wait = metrics.queue_wait_seconds.labels(model)
        self._inference_seconds = metrics.inference_seconds.labels(model)
        self._batch_size = metrics.batch_size.labels(model)
        self._max_batch = max_batch_size
        self._max_delay = max_delay_ms / 1000.0
        self._queue_size = queue_size
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._busy = False

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        """Whether a batch is on (or waiting for) the inference thread."""
        return self._busy

    def start(self) -> None:
        self._task = asyncio.create_task(self._collect(), name="batcher")

    async def infer(self, image: np.ndarray, timeout_s: float) -> InferenceResult:
        """Queue one preprocessed image ``[3,S,S]`` and wait for its outputs.

        Raises:
            QueueFullError: the queue is full or the service is shutting down.
            TimeoutError: no result within ``timeout_s`` (the image is dropped if it has not run yet).
        """
        if self._draining or self._queue.qsize() >= self._queue_size:
            raise QueueFullError("draining" if self._draining else "queue full")
        pending = _Pending(image, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(pending)
        self._queue_depth.set(self._queue.qsize())
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), timeout_s)
        except TimeoutError:
            # Cancelled futures are skipped by the collector, so a timed-out image costs no inference.
            pending.future.cancel()
            raise

    async def _take_batch(self) -> list[_Pending]:
        batch = [await self._queue.get()]
        deadline = time.perf_counter() + self._max_delay
        while len(batch) < self._max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        self._queue_depth.set(self._queue.qsize())
        return [p for p in batch if not p.future.done()]

    async def _collect(self) -> None:
        while True:
            batch = await self._take_batch()
            if not batch:
                continue
            self._busy = True
            try:
                await self._run(batch)
            finally:
                self._busy = False

    async def _run(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            outputs, seconds = await self._engine.run(np.stack([p.image for p in batch]))
        except Exception as exc:  # an engine failure must reach every caller, not kill the collector
            log.exception("inference failed for a batch of %d", len(batch))
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        self._inference_seconds.observe(seconds)
        self._batch_size.observe(len(batch))
        for index, pending in enumerate(batch):
            queue_s = started - pending.enqueued
            self._queue_wait.observe(queue_s)
            if pending.future.done():
                continue
            mine = {name: value[index] for name, value in outputs.items()}
            pending.future.set_result(InferenceResult(mine, queue_s, seconds, len(batch)))

    async def drain(self, timeout_s: float) -> None:
        """Refuse new work, let queued and running batches finish (up to ``timeout_s``), then stop."""
        self._draining = True
        deadline = time.perf_counter() + timeout_s
        while (not self._queue.empty() or self._busy) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if not self._queue.empty():
            log.warning("shutdown: dropping %d queued images after %.1f s", self._queue.qsize(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            pending = self._queue.get_nowait()
            if not pending.future.done():
                pending.future.set_exception(QueueFullError("service shutting down"))
