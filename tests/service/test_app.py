"""Every route and every error through the real ASGI app (lifespan run, real bundle, real ONNX Runtime)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service.conftest import decode_png_b64, encode, running_app, scene

pytestmark = pytest.mark.anyio


def upload(data: bytes, name: str = "image.png") -> dict:
    return {"image": (name, data, "application/octet-stream")}


async def test_saliency_json_at_original_size(client: httpx.AsyncClient) -> None:
    response = await client.post("/saliency", files=upload(encode(scene(96, 64))), headers={"X-Request-ID": "abc-1"})
    assert response.status_code == 200
    body = response.json()
    assert response.headers["x-request-id"] == body["request_id"] == "abc-1"
    assert body["image"] == {"width": 96, "height": 64}
    saliency = decode_png_b64(body["saliency_png"])
    assert saliency.shape == (64, 96) and saliency.dtype == np.uint8
    assert body["overlay_png"] is None and body["attention"] is None
    assert set(body["timings"]) == {"decode", "queue", "inference", "postprocess"}
    assert all(v >= 0 for v in body["timings"].values()) and body["timings"]["inference"] > 0
    manifest = client.app.state.service.repository.default.engine.manifest  # type: ignore[attr-defined]
    assert body["model"]["name"] == manifest.name and body["model"]["version"] == manifest.version


async def test_png_answer_equals_the_json_map(client: httpx.AsyncClient) -> None:
    data = encode(scene(50, 40, seed=2))
    as_json = await client.post("/saliency", files=upload(data))
    by_format = await client.post("/saliency?format=png", files=upload(data))
    by_accept = await client.post("/saliency", files=upload(data), headers={"Accept": "image/png"})
    for response in (by_format, by_accept):
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        png = np.asarray(Image.open(io.BytesIO(response.content)))
        np.testing.assert_array_equal(png, decode_png_b64(as_json.json()["saliency_png"]))


async def test_overlay_and_attention(client: httpx.AsyncClient) -> None:
    response = await client.post("/saliency?outputs=saliency,overlay,attention", files=upload(encode(scene(80, 60))))
    body = response.json()
    assert decode_png_b64(body["overlay_png"]).shape == (60, 80, 3)
    saliency = decode_png_b64(body["saliency_png"])
    assert len(body["attention"]) == 2  # default points: most and least salient pixel
    high, low = body["attention"]
    assert saliency[int(high["y"]), int(high["x"])] == saliency.max()
    assert saliency[int(low["y"]), int(low["x"])] == saliency.min()
    manifest = client.app.state.service.repository.default.engine.manifest  # type: ignore[attr-defined]
    assert [m["output"] for m in high["maps"]] == [o.name for o in manifest.output("attention")]
    for attention_map in high["maps"]:
        assert len(attention_map["weights"]) == attention_map["grid"] ** 2
        heat = decode_png_b64(attention_map["heatmap_png"])
        assert heat.shape == (60, 80)
        if attention_map["kind"] == "global" and attention_map["normalization"] == "softmax":
            assert sum(w["weight"] for w in attention_map["weights"]) == pytest.approx(1.0, abs=1e-4)
    # One image-level map per attention output, drawn from the same numbers the weights came from.
    summaries = {"global": "received", "local": "spread", "spatial": "map"}
    image_maps = body["attention_maps"]
    assert [(m["output"], m["summary"]) for m in image_maps] == [
        (o.name, summaries[o.attention.kind]) for o in manifest.output("attention")
    ]
    for image_map in image_maps:
        heat = decode_png_b64(image_map["heatmap_png"])
        assert heat.shape == (60, 80) and heat.max() > 200 and image_map["peak"] > 0  # 255 before resizing
        if image_map["summary"] == "received":  # a softmax over the grid: on average one unit handed out per pixel
            assert image_map["peak"] <= 1.0
    plain = (await client.post("/saliency", files=upload(encode(scene(80, 60))))).json()
    assert plain["attention_maps"] is None


async def test_attention_heatmap_peaks_where_the_weights_say(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/saliency?outputs=attention&points=70,10;5,55", files=upload(encode(scene(120, 90, seed=5)))
    )
    assert response.status_code == 200
    body = response.json()
    assert body["saliency_png"] is None
    assert [(p["x"], p["y"]) for p in body["attention"]] == [(70, 10), (5, 55)]
    specs = {
        o.name: o.attention for o in client.app.state.service.repository.default.engine.manifest.output("attention")
    }  # type: ignore[attr-defined]
    for point in body["attention"]:
        for attention_map in point["maps"]:
            heat = decode_png_b64(attention_map["heatmap_png"]).astype(float)
            inside = [w for w in attention_map["weights"] if w["inside"]]
            top = max(w["weight"] for w in inside)
            spec = specs[attention_map["output"]]
            for w in inside:
                # Each weight shows at its own cell centre as 255·w/max (coordinates are continuous: pixel i spans
                # [i, i+1)); sampling the pixel holding the centre is at most half a pixel off, which bilinear
                # interpolation towards the neighbouring canvas cells costs 0.5/cell_size per axis. Those cells are
                # empty for dilated grids; for an undilated one they hold other weights, which may pull either way.
                cell_w, cell_h = spec.stride * 120 / 224, spec.stride * 90 / 224
                slack = 255 * (0.5 / cell_w + 0.5 / cell_h) if spec.dilation == 1 else 0.0
                expected = 255 * w["weight"] / top
                lower = expected * (1 - 0.5 / cell_w) * (1 - 0.5 / cell_h) - 2 - slack
                x, y = min(int(w["x"]), 119), min(int(w["y"]), 89)
                assert lower <= heat[y, x] <= expected + 2 + slack, (attention_map["output"], w)


async def test_batch_route_keeps_order(client: httpx.AsyncClient) -> None:
    sizes = [(40, 30), (64, 48), (32, 60)]
    files = [("images", (f"{i}.png", encode(scene(w, h, seed=i)), "image/png")) for i, (w, h) in enumerate(sizes)]
    response = await client.post("/saliency/batch", files=files)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [(r["image"]["width"], r["image"]["height"]) for r in results] == sizes
    solo = await client.post("/saliency", files=upload(encode(scene(64, 48, seed=1))))
    solo_map = decode_png_b64(solo.json()["saliency_png"])
    assert np.abs(decode_png_b64(results[1]["saliency_png"]).astype(int) - solo_map.astype(int)).max() <= 1


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("outputs=bogus", "invalid_option"),
        ("outputs=groups", "output_not_available"),
        ("outputs=attention&points=1,2,3", "invalid_option"),
        ("outputs=attention&points=nan,2", "invalid_option"),
        ("outputs=attention&points=500,5", "invalid_option"),  # outside the 40x30 image
        ("points=1,2", "invalid_option"),  # points without attention
        ("format=png&outputs=overlay", "invalid_option"),
        ("format=gif", "invalid_request"),
        ("model=someone_else", "unknown_model"),
    ],
)
async def test_bad_options_are_422(client: httpx.AsyncClient, query: str, code: str) -> None:
    response = await client.post(f"/saliency?{query}", files=upload(encode(scene(40, 30))))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


async def test_groups_without_a_cosaliency_model_say_what_to_serve(client: httpx.AsyncClient) -> None:
    response = await client.post("/saliency?outputs=saliency,groups", files=upload(encode(scene(40, 30))))
    assert response.status_code == 422 and response.json()["error"]["code"] == "output_not_available"
    assert "needs a co-saliency model" in response.json()["error"]["message"]


async def test_bad_input_errors_and_the_server_keeps_serving(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(max_upload_bytes=200_000, max_pixels=1_000_000, max_batch_images=2)
    good = encode(scene(40, 30))
    bomb = encode(Image.new("L", (5000, 5000)))
    async with running_app(settings) as client:
        cases = [
            (upload(b"this is text, not an image"), 415, "unsupported_media_type"),
            (upload(good[:60]), 400, "corrupt_image"),
            (upload(b""), 400, "empty_image"),
            (upload(bomb), 413, "too_many_pixels"),
            (upload(np.random.default_rng(0).bytes(210_000)), 413, "upload_too_large"),
            ({"wrong_field": ("a.png", good, "image/png")}, 422, "invalid_request"),
        ]
        for files, status, code in cases:
            response = await client.post("/saliency", files=files)
            assert (response.status_code, response.json()["error"]["code"]) == (status, code)
        whole_body = await client.post("/saliency", files=upload(np.random.default_rng(1).bytes(300_000)))
        assert (whole_body.status_code, whole_body.json()["error"]["code"]) == (413, "upload_too_large")
        assert whole_body.headers["x-request-id"]  # refused before routing, still tagged
        too_many = [("images", (f"{i}.png", good, "image/png")) for i in range(3)]
        response = await client.post("/saliency/batch", files=too_many)
        assert (response.status_code, response.json()["error"]["code"]) == (413, "too_many_images")
        mixed = [("images", ("a.png", good, "image/png")), ("images", ("b.png", b"GIF89a broken", "image/gif"))]
        response = await client.post("/saliency/batch", files=mixed)
        assert response.status_code == 400 and response.json()["error"]["message"].startswith("images[1]:")
        response = await client.post("/saliency", content=b"not multipart", headers={"Content-Type": "text/plain"})
        assert response.status_code == 422
        assert (await client.get("/nowhere")).json()["error"]["code"] == "not_found"
        assert (await client.get("/saliency")).status_code == 405

        async def chunks() -> AsyncIterator[bytes]:  # a valid multipart head, then an endless file, no length
            yield b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
            for _ in range(40):
                yield b"x" * 10_000

        response = await client.post(
            "/saliency", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=zz"}
        )
        assert (response.status_code, response.json()["error"]["code"]) == (413, "upload_too_large")
        assert (await client.post("/saliency", files=upload(good))).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'saliency_errors_total{code="unsupported_media_type"} 1.0' in metrics
        assert 'status="500"' not in metrics


async def test_auth(make_settings: Callable[..., Settings]) -> None:
    data = encode(scene(40, 30))
    async with running_app(make_settings(api_keys="k1,k2")) as client:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic k1"}):
            response = await client.post("/saliency", files=upload(data), headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await client.get("/models")).status_code == 401
        ok = await client.post("/saliency", files=upload(data), headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 200
        for open_route in ("/healthz", "/readyz", "/metrics", "/"):
            assert (await client.get(open_route)).status_code == 200


async def test_system_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json()["ready"] is True
    models = (await client.get("/models")).json()["models"]
    assert len(models) == 1
    info = models[0]
    assert info["provider"] == "CPUExecutionProvider" and info["provider"] in info["providers"]
    assert info["variant"] in info["variants"] and "attention" in info["options"]
    page = await client.get("/")
    assert page.headers["content-type"].startswith("text/html") and 'id="overlay"' in page.text
    assert "cdn" not in page.text.lower() and "<script src" not in page.text
    assert (await client.get("/docs")).status_code == 200
    spec = (await client.get("/openapi.json")).json()
    assert {"/saliency", "/saliency/batch", "/models", "/healthz", "/readyz", "/metrics"} <= set(spec["paths"])
    for path in ("/saliency", "/saliency/batch", "/models", "/healthz", "/readyz"):
        for method in spec["paths"][path].values():
            assert "$ref" in str(method["responses"]["200"]), path  # a response model for every JSON route


async def test_not_ready_before_startup(make_settings: Callable[..., Settings]) -> None:
    from service.app import create_app

    app = create_app(make_settings())  # lifespan not run: no model yet
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503 and response.json()["ready"] is False
        response = await client.post("/saliency", files=upload(encode(scene(40, 30))))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"


async def test_metrics_after_traffic(client: httpx.AsyncClient) -> None:
    await client.post("/saliency", files=upload(encode(scene(40, 30))))
    await client.post("/saliency", files=upload(b"junk"))
    await client.get("/healthz")
    text = (await client.get("/metrics")).text
    info = client.app.state.service.repository.default.engine.info  # type: ignore[attr-defined]
    model = f'model="{info.manifest.name}"'
    requests = 'saliency_requests_total{{method="POST",{},protocol="saliency",route="/saliency",status="{}"}} 1.0'
    assert requests.format(model, 200) in text
    assert requests.format(model, 415) in text
    for name in (
        'saliency_request_latency_seconds_bucket{groups="false",le="0.005",protocol="saliency",route="/saliency"}',
        f"saliency_queue_wait_seconds_count{{{model}}} 1.0",
        f"saliency_inference_seconds_count{{{model}}}",
        f'saliency_batch_size_bucket{{le="1.0",{model}}}',
        f"saliency_queue_depth{{{model}}} 0.0",
        "saliency_inflight_requests 1.0",  # the /metrics request itself
        'saliency_errors_total{code="unsupported_media_type"} 1.0',
        f'saliency_stage_seconds_count{{{model},stage="decode"}} 1.0',  # junk is refused from its first bytes
        f'saliency_stage_seconds_count{{{model},stage="preprocess"}} 1.0',
        f'saliency_stage_seconds_count{{{model},stage="postprocess"}} 1.0',
        f'saliency_stage_seconds_count{{{model},stage="encode"}} 1.0',
        'saliency_requests_total{method="GET",model="",protocol="saliency",route="/healthz",status="200"} 1.0',
    ):
        assert name in text, name
    assert (
        f'saliency_model_info{{name="{info.manifest.name}",provider="CPUExecutionProvider",'
        f'variant="{info.variant}",version="{info.manifest.version}"}} 1.0'
    ) in text


async def test_cors_off_by_default_and_on_when_configured(make_settings: Callable[..., Settings]) -> None:
    preflight = {"Origin": "http://example.org", "Access-Control-Request-Method": "POST"}
    async with running_app(make_settings()) as client:
        response = await client.options("/saliency", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    async with running_app(make_settings(cors_origins="http://example.org")) as client:
        response = await client.options("/saliency", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "http://example.org"
        other = await client.options("/saliency", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
