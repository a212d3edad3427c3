"""Dynamic batching through the real app: batches form, answers reach the right caller, a full queue is refused,
slow answers time out, and shutdown drains queued work."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from service.settings import Settings
from tests.service.conftest import decode_png_b64, encode, running_app, scene

pytestmark = pytest.mark.anyio


def upload(data: bytes) -> dict:
    return {"image": ("image.png", data, "image/png")}


def block_inference(app: FastAPI) -> threading.Event:
    """Occupy the single inference thread, as a long batch would; set the returned event to free it."""
    release = threading.Event()
    app.state.service.repository.default.engine._executor.submit(release.wait, 30)
    return release


async def wait_for_depth(app: FastAPI, depth: int) -> None:
    """Wait until ``depth`` images are queued behind a running batch."""
    batcher = app.state.service.repository.default.pipeline.batcher
    for _ in range(2000):
        if batcher.depth == depth and batcher.running:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"queue depth never reached {depth} (is {batcher.depth}, running {batcher.running})")


async def test_concurrent_requests_form_batches_and_answers_reach_their_callers(
    make_settings: Callable[..., Settings],
) -> None:
    sizes = [(48, 40), (64, 32), (40, 56), (72, 48), (36, 36), (56, 44)]
    images = [encode(scene(w, h, seed=10 + i)) for i, (w, h) in enumerate(sizes)]
    async with running_app(make_settings(max_batch_size=8, max_delay_ms=50)) as client:
        solo = []
        for data in images:
            body = (await client.post("/saliency", files=upload(data))).json()
            assert body["batch_size"] == 1
            solo.append(decode_png_b64(body["saliency_png"]).astype(int))
        # The answers must be told apart, or "right caller" would prove nothing.
        assert all(solo[i].shape != solo[j].shape or np.abs(solo[i] - solo[j]).max() > 3
                   for i in range(len(solo)) for j in range(i))  # fmt: skip
        # While the inference thread is busy (a request ahead of them), all six queue up; freed, they run together.
        release = block_inference(client.app)  # type: ignore[attr-defined]
        ahead = asyncio.create_task(client.post("/saliency", files=upload(images[0])))
        await wait_for_depth(client.app, 0)  # type: ignore[attr-defined]
        tasks = [asyncio.create_task(client.post("/saliency", files=upload(data))) for data in images]
        await wait_for_depth(client.app, len(images))  # type: ignore[attr-defined]
        release.set()
        responses = await asyncio.gather(*tasks)
        assert (await ahead).status_code == 200
        assert [r.json()["batch_size"] for r in responses] == [len(images)] * len(images)
        for (width, height), response, expected in zip(sizes, responses, solo, strict=True):
            body = response.json()
            assert body["image"] == {"width": width, "height": height}
            # Same image alone or in a batch: the same map up to one grey level of rounding.
            assert np.abs(decode_png_b64(body["saliency_png"]).astype(int) - expected).max() <= 1
        metrics = (await client.get("/metrics")).text
        lines = metrics.splitlines()
        single = next(x for x in lines if x.startswith('saliency_batch_size_bucket{le="1.0",model='))
        batches = next(x for x in lines if x.startswith("saliency_batch_size_count{model="))
        assert float(single.split()[-1]) < float(batches.split()[-1])


async def test_full_queue_is_503_with_retry_after(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_batch_size=1, queue_size=2, max_delay_ms=0)
    async with running_app(settings) as client:
        release = block_inference(client.app)  # type: ignore[attr-defined]
        data = encode(scene(40, 30))
        first = asyncio.create_task(client.post("/saliency", files=upload(data)))  # taken by the collector
        await wait_for_depth(client.app, 0)  # type: ignore[attr-defined]
        queued = [asyncio.create_task(client.post("/saliency", files=upload(data))) for _ in range(2)]
        await wait_for_depth(client.app, 2)  # type: ignore[attr-defined]
        refused = await client.post("/saliency", files=upload(data))
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "overloaded"
        release.set()
        assert [r.status_code for r in await asyncio.gather(first, *queued)] == [200, 200, 200]
        assert (await client.post("/saliency", files=upload(data))).status_code == 200


async def test_timeout_is_504_and_the_server_recovers(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(request_timeout_s=0.3)) as client:
        release = block_inference(client.app)  # type: ignore[attr-defined]
        data = encode(scene(40, 30))
        response = await client.post("/saliency", files=upload(data))
        assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
        release.set()
        metrics = (await client.get("/metrics")).text
        assert 'saliency_errors_total{code="timeout"} 1.0' in metrics
        # The batcher still serves (asked directly, with a timeout this busy machine can always meet).
        pipeline = client.app.state.service.repository.default.pipeline  # type: ignore[attr-defined]
        size = pipeline.engine.input_size
        result = await pipeline.batcher.infer(np.zeros((3, size, size), np.float32), timeout_s=120)
        assert result.outputs["saliency"].shape[0] == 1


async def test_shutdown_drains_queued_requests(make_settings: Callable[..., Settings]) -> None:
    from service.app import create_app

    app = create_app(make_settings(max_batch_size=1, max_delay_ms=0))
    lifespan = app.router.lifespan_context(app)
    await lifespan.__aenter__()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        release = block_inference(app)
        data = encode(scene(40, 30))
        tasks = [asyncio.create_task(client.post("/saliency", files=upload(data))) for _ in range(3)]
        await wait_for_depth(app, 2)
        stopping = asyncio.create_task(lifespan.__aexit__(None, None, None))
        while app.state.service.ready:
            await asyncio.sleep(0.01)
        late = await client.post("/saliency", files=upload(data))
        assert late.status_code == 503  # no new work once draining
        release.set()
        await stopping
        assert [r.status_code for r in await asyncio.gather(*tasks)] == [200, 200, 200]
