"""Bounded memory and time per request through the real ASGI app: map and heatmap size caps, post-processing
memory (tracemalloc), admission before decoding, the API key before the body, one deadline for the whole request,
and the small leaks (heap addresses, bundle paths, duplicate fields, control characters in logs, offline docs)."""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import tracemalloc
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from service.logs import PlainFormatter
from service.pipeline import Deadline, Options
from service.settings import Settings
from tests.service.conftest import decode_png_b64, encode, running_app, scene
from tests.service.test_batching import block_inference, upload

pytestmark = pytest.mark.anyio


def big_sparse_gif(width: int, height: int) -> bytes:
    """A small file that decodes to many pixels: a flat palette image with one bright block (LZW packs it tight)."""
    pixels = np.zeros((height, width), np.uint8)
    pixels[height // 3 : height // 2, width // 3 : width // 2] = 1
    img = Image.fromarray(pixels, mode="P")
    img.putpalette([30, 60, 90, 250, 240, 40] + [0] * 762)
    buffer = io.BytesIO()
    img.save(buffer, format="GIF")
    return buffer.getvalue()


async def test_huge_image_gets_capped_maps_and_heatmaps(make_settings: Callable[..., Settings]) -> None:
    data = big_sparse_gif(4000, 3000)
    assert len(data) < 200_000  # small upload, 12 M pixels
    points = ";".join(f"{x},{y}" for x in (100, 2000, 3900) for y in (100, 1500, 2900))
    settings = make_settings(max_map_side=1024, max_attention_side=256)
    async with running_app(settings) as client:
        response = await client.post(
            "/saliency", params={"outputs": "saliency,overlay,attention", "points": points}, files=upload(data)
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["image"] == {"width": 4000, "height": 3000}
        assert body["map_size"] == {"width": 1024, "height": 768}
        assert decode_png_b64(body["saliency_png"]).shape == (768, 1024)
        assert decode_png_b64(body["overlay_png"]).shape == (768, 1024, 3)
        assert len(body["attention"]) == 9
        first = body["attention"][0]
        assert (first["x"], first["y"]) == (100, 100)  # points stay in the upload's pixels
        for point in body["attention"]:
            for answer in point["maps"]:
                assert decode_png_b64(answer["heatmap_png"]).shape == (192, 256)
        smaller = await client.post("/saliency", params={"max_side": 300}, files=upload(data))
        assert smaller.json()["map_size"] == {"width": 300, "height": 225}
        too_big = await client.post("/saliency", params={"max_side": 5000}, files=upload(data))
        assert too_big.status_code == 422 and "max_map_side" in too_big.json()["error"]["message"]


async def test_post_processing_memory_does_not_grow_with_the_image(make_settings: Callable[..., Settings]) -> None:
    """tracemalloc sees numpy's buffers: post-processing a 36-megapixel image with every output and 16 points
    allocates about what a 2048-pixel map needs, far from the ~150 MB of one float map at full size."""
    data = big_sparse_gif(6000, 6000)
    options = Options(
        outputs=frozenset({"saliency", "overlay", "attention"}),
        points=[(float(x), float(y)) for x in range(0, 6000, 1500) for y in range(0, 6000, 1500)],
    )
    async with running_app(make_settings()) as client:
        pipeline = client.app.state.service.repository.default.pipeline  # type: ignore[attr-defined]
        deadline = Deadline(120)
        header = pipeline._header(data)
        decoded = pipeline._decode(data, header, pipeline._map_side(options), deadline)
        assert decoded.image.size == (2048, 2048) and decoded.original == (6000, 6000)
        result = await pipeline._infer(decoded.tensor, deadline)
        tracemalloc.start()
        try:
            fields, _ = pipeline._postprocess(decoded, result, options, deadline)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(fields["attention"]) == 16
    full_size_float_map = 6000 * 6000 * 4
    assert peak < 64 * 2**20 < full_size_float_map, f"post-processing peaked at {peak / 2**20:.0f} MiB"


async def test_admission_refuses_when_the_pixel_budget_is_full_without_decoding(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(max_pixels=100 * 100, max_inflight_pixels=100 * 100 + 50)
    async with running_app(settings) as client:
        release = block_inference(client.app)  # type: ignore[attr-defined]
        first = asyncio.create_task(client.post("/saliency", files=upload(encode(scene(100, 100)))))
        admission = client.app.state.service.admission  # type: ignore[attr-defined]
        while admission.usage.pixels == 0:
            await asyncio.sleep(0.01)
        metrics = client.app.state.service.metrics  # type: ignore[attr-defined]
        decoded_before = _count(metrics, "decode")
        refused = await client.post("/saliency", files=upload(encode(scene(90, 90))))
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "decoded pixels in flight" in refused.json()["error"]["message"]
        assert _count(metrics, "decode") == decoded_before  # refused before decoding
        release.set()
        assert (await first).status_code == 200
        assert admission.usage.pixels == 0 and admission.usage.requests == 0


def _count(metrics: object, stage: str) -> float:
    for family in metrics.registry.collect():  # type: ignore[attr-defined]
        for sample in family.samples:
            if sample.name == "saliency_stage_seconds_count" and sample.labels.get("stage") == stage:
                return sample.value
    return 0.0


async def asgi_post(app: object, path: str, headers: dict[str, str], chunks: int) -> list[str]:
    """POST straight into the ASGI app; returns what happened, in order: body chunks read, response parts sent."""
    events: list[str] = []
    left = chunks

    async def receive() -> dict:
        nonlocal left
        if left == 0:
            return {"type": "http.disconnect"}
        left -= 1
        events.append("body read")
        return {"type": "http.request", "body": b"x" * 1000, "more_body": left > 0}

    async def send(message: dict) -> None:
        events.append(f"{message['type']} {message.get('status', '')}".strip())

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 1), "server": ("test", 80),
    }  # fmt: skip
    await app(scope, receive, send)  # type: ignore[operator]
    return events


MULTIPART = {"content-type": "multipart/form-data; boundary=x", "content-length": "3000"}


async def test_admission_refuses_too_many_requests_before_reading_the_body(
    make_settings: Callable[..., Settings],
) -> None:
    async with running_app(make_settings(max_inflight_requests=1)) as client:
        release = block_inference(client.app)  # type: ignore[attr-defined]
        first = asyncio.create_task(client.post("/saliency", files=upload(encode(scene(40, 30)))))
        admission = client.app.state.service.admission  # type: ignore[attr-defined]
        while admission.usage.requests == 0:
            await asyncio.sleep(0.01)
        refused = await client.post("/saliency", files=upload(encode(scene(40, 30))))
        assert refused.status_code == 503 and "requests in flight" in refused.json()["error"]["message"]
        # Answered first; the body on its way is then dropped (read, never stored) so that the client sees it.
        events = await asgi_post(client.app, "/saliency", MULTIPART, chunks=3)
        assert events == ["http.response.start 503", "body read", "body read", "body read", "http.response.body"]
        release.set()
        assert (await first).status_code == 200


async def test_upload_larger_than_the_whole_byte_budget_is_413(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_upload_bytes=4096, max_inflight_bytes=8192, max_batch_images=4)
    async with running_app(settings) as client:
        images = [("images", (f"{i}.bin", b"x" * 3000)) for i in range(4)]
        response = await client.post("/saliency/batch", files=images)
        assert response.status_code == 413 and "SALIENCY_MAX_INFLIGHT_BYTES" in response.json()["error"]["message"]


async def test_api_key_is_checked_before_the_body_is_read(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(api_keys="k1")) as client:
        for path in ("/saliency", "/api/remove", "/v2/models/default/infer"):
            events = await asgi_post(client.app, path, MULTIPART, chunks=2)
            assert events == ["http.response.start 401", "body read", "body read", "http.response.body"], path
            waiting = await asgi_post(client.app, path, MULTIPART | {"expect": "100-continue"}, chunks=2)
            assert waiting == ["http.response.start 401", "http.response.body"], path  # nothing read at all
        response = await client.post("/saliency", files=upload(encode(scene(30, 30))))
        assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/healthz")).status_code == 200  # probes stay open
        assert (await client.get("/v2/health/ready")).status_code == 200


async def test_one_deadline_covers_decoding_too(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(request_timeout_s=0.5)) as client:
        pool = client.app.state.service.repository.default.pipeline.pool  # type: ignore[attr-defined]
        gate = threading.Event()
        blockers = [pool.submit(gate.wait, 30) for _ in range(pool._max_workers)]  # decoding threads all busy
        response = await client.post("/saliency", files=upload(encode(scene(40, 30))))
        assert response.status_code == 504
        assert "deadline passed during reading the image header" in response.json()["error"]["message"]
        gate.set()
        for blocker in blockers:
            blocker.result(timeout=10)
        admission = client.app.state.service.admission  # type: ignore[attr-defined]
        for _ in range(200):  # the reservation comes back once the thread has stopped
            if admission.usage.pixels == 0:
                break
            await asyncio.sleep(0.01)
        assert admission.usage.pixels == 0
        assert (await client.post("/saliency", files=upload(encode(scene(40, 30))))).status_code == 200


async def test_no_heap_address_bundle_path_or_duplicate_fields(client: httpx.AsyncClient) -> None:
    corrupt = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40
    message = (await client.post("/saliency", files=upload(corrupt))).json()["error"]["message"]
    assert " at 0x" not in message
    bundle = (await client.get("/models")).json()["models"][0]["bundle"]
    assert "/" not in bundle
    data = encode(scene(40, 30))
    twice = await client.post("/saliency", files=[("image", ("a.png", data)), ("image", ("b.png", data))])
    assert twice.status_code == 422 and "several image fields" in twice.json()["error"]["message"]


async def test_api_docs_load_their_assets_from_the_server(client: httpx.AsyncClient) -> None:
    page = (await client.get("/docs")).text
    assert "cdn." not in page and "/docs-assets/swagger-ui-bundle.js" in page
    script = await client.get("/docs-assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 100_000


def test_plain_log_lines_escape_control_characters() -> None:
    formatter = PlainFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s %s", ("POST", "/a\nINFO forged\x1b[31m"), None)
    line = formatter.format(record)
    assert "\n" not in line and "\x1b" not in line
    assert line == "INFO POST /a\\nINFO forged\\x1b[31m"
