"""The protocols other clients speak, through the real ASGI app: rembg's ``/api/remove`` (the multipart request a
rembg user sends) and the KServe v2 routes' edges (Triton's own client drives the main paths in test_live.py)."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from PIL import Image

from service.routers.rembg import post_process
from service.settings import Settings
from tests.service.conftest import encode, running_app, scene

pytestmark = pytest.mark.anyio


def rembg_request(data: bytes, **form: str) -> dict:
    """What rembg's own clients post: the file as ``file`` plus form fields."""
    return {"files": {"file": ("photo.jpg", data, "image/jpeg")}, "data": form}


async def saliency_map(client: httpx.AsyncClient, data: bytes) -> np.ndarray:
    response = await client.post("/saliency", params={"format": "png"}, files={"image": ("x.png", data)})
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)))


def png(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


async def test_rembg_cutout_alpha_is_the_saliency_map(client: httpx.AsyncClient) -> None:
    pixels = scene(90, 60, seed=7)
    data = encode(pixels)
    cutout = png(await client.post("/api/remove", **rembg_request(data, model="u2net")))
    assert cutout.mode == "RGBA" and cutout.size == (90, 60)
    rgba = np.asarray(cutout)
    np.testing.assert_array_equal(rgba[..., 3], await saliency_map(client, data))
    np.testing.assert_array_equal(rgba[..., :3], pixels)


async def test_rembg_only_mask_and_post_processing(client: httpx.AsyncClient) -> None:
    data = encode(scene(80, 64, seed=8))
    expected = await saliency_map(client, data)
    mask = png(await client.post("/api/remove", **rembg_request(data, om="true")))
    assert mask.mode == "L"
    np.testing.assert_array_equal(np.asarray(mask), expected)
    smoothed = np.asarray(png(await client.post("/api/remove", **rembg_request(data, om="true", ppm="true"))))
    assert set(np.unique(smoothed)) <= {0, 255}
    np.testing.assert_array_equal(smoothed, post_process(expected))


def test_post_process_removes_specks_and_keeps_the_object() -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[10:30, 10:30] = 200
    mask[2, 2] = 255  # a one-pixel speck
    out = post_process(mask)
    assert out[2, 2] == 0 and out[20, 20] == 255 and out[0, 39] == 0


async def test_rembg_background_colour(client: httpx.AsyncClient) -> None:
    data = encode(scene(60, 40, seed=9))
    alpha = (await saliency_map(client, data)).astype(np.float32) / 255
    response = await client.post("/api/remove", params={"bgc": "0,0,255,255"}, **rembg_request(data))
    rgba = np.asarray(png(response)).astype(np.float32)
    assert (rgba[..., 3] == 255).all()  # an opaque background
    # Where the map says background, the colour shows through: blue grows as alpha falls.
    expected_blue = np.asarray(Image.open(io.BytesIO(data)))[..., 2] * alpha + 255 * (1 - alpha)
    np.testing.assert_allclose(rgba[..., 2], expected_blue, atol=2)


@pytest.mark.parametrize(
    ("form", "query", "fragment"),
    [
        ({"a": "true"}, {}, "alpha matting"),
        ({"a": "true", "af": "200", "ab": "20", "ae": "5"}, {}, "a, af, ab, ae"),
        ({}, {"bgc": "red"}, "r,g,b,a"),
        ({}, {"bgc": "0,0,300,255"}, "r,g,b,a"),
        ({"model": "my-favourite-net"}, {}, "rembg model name"),
        ({}, {"extras": '{"sam_prompt": []}'}, "extras"),
    ],
)
async def test_rembg_options_it_cannot_honour_are_422(
    client: httpx.AsyncClient, form: dict, query: dict, fragment: str
) -> None:
    response = await client.post("/api/remove", params=query, **rembg_request(encode(scene(30, 30)), **form))
    assert response.status_code == 422
    assert fragment in response.json()["error"]["message"]


async def test_rembg_refuses_two_files(client: httpx.AsyncClient) -> None:
    data = encode(scene(30, 30))
    response = await client.post("/api/remove", files=[("file", ("a.png", data)), ("file", ("b.png", data))])
    assert response.status_code == 422 and "several file fields" in response.json()["error"]["message"]


async def test_rembg_url_fetching_is_refused_with_405(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/remove", params={"url": "http://169.254.169.254/latest/meta-data"})
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    message = response.json()["error"]["message"]
    assert "never fetches URLs" in message and "POST the image file" in message


async def test_rembg_corrupt_upload_and_metrics(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/remove", **rembg_request(b"not an image"))
    assert response.status_code in (400, 415)
    text = (await client.get("/metrics")).text
    assert 'protocol="rembg",route="/api/remove"' in text


async def test_v2_health_answers_by_status_code(client: httpx.AsyncClient) -> None:
    for path in ("/v2/health/live", "/v2/health/ready"):
        response = await client.get(path)
        assert response.status_code == 200 and response.content == b""


async def test_v2_errors_use_the_protocols_shape(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(api_keys="k1", max_batch_images=2)) as client:
        unauthorised = await client.get("/v2/models/default")
        assert unauthorised.status_code == 401 and isinstance(unauthorised.json()["error"], str)
        headers = {"Authorization": "Bearer k1"}
        unknown = await client.get("/v2/models/nope/versions/3", headers=headers)
        assert unknown.status_code == 404 and "nope" in unknown.json()["error"]
        name = client.app.state.service.repository.default.engine.manifest.name  # type: ignore[attr-defined]
        wrong_version = await client.get(f"/v2/models/{name}/versions/999/ready", headers=headers)
        assert wrong_version.status_code == 404
        three = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [3], "data": ["a", "b", "c"]}]}
        too_many = await client.post("/v2/models/default/infer", json=three, headers=headers)
        assert too_many.status_code == 400 and "1 to 2" in too_many.json()["error"]
        not_base64 = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}
        bad = await client.post("/v2/models/default/infer", json=not_base64, headers=headers)
        assert bad.status_code == 400 and "base64" in bad.json()["error"]


@pytest.mark.parametrize(
    ("header", "body", "fragment"),
    [
        (None, {"inputs": []}, "non-empty 'inputs'"),
        (None, {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, 2, 2], "data": [0.0] * 12}]}, "shape"),
        (None, {"inputs": [{"name": "image", "datatype": "FP16", "shape": [1], "data": [1.0]}]}, "FP16"),
        (None, {"inputs": [{"name": "image", "datatype": "INT7", "shape": [1], "data": [1]}]}, "datatype"),
        (None, {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["a"]}]}, "2 strings"),
        ("5", {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1]}]}, "not JSON"),
    ],
)
async def test_v2_malformed_requests_are_400(
    client: httpx.AsyncClient, header: str | None, body: dict, fragment: str
) -> None:
    headers = {"Inference-Header-Content-Length": header} if header else {}
    response = await client.post("/v2/models/default/infer", content=json.dumps(body).encode(), headers=headers)
    assert response.status_code == 400 and fragment in response.json()["error"]


async def test_v2_gzip_request_and_unknown_output(client: httpx.AsyncClient) -> None:
    import base64

    image = base64.b64encode(encode(scene(40, 30))).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    compressed = gzip.compress(json.dumps(body | {"outputs": [{"name": "saliency"}]}).encode())
    response = await client.post("/v2/models/default/infer", content=compressed, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 200
    (output,) = response.json()["outputs"]
    assert output["name"] == "saliency" and output["datatype"] == "FP32"
    assert len(output["data"]) == int(np.prod(output["shape"]))
    unknown = await client.post("/v2/models/default/infer", json=body | {"outputs": [{"name": "mask"}]})
    assert unknown.status_code == 400 and "mask" in unknown.json()["error"]


async def test_v2_large_json_tensors_must_use_binary_data(client: httpx.AsyncClient) -> None:
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["A" * (17 * 2**20)]}]}
    response = await client.post("/v2/models/default/infer", content=json.dumps(body).encode())
    assert response.status_code == 413 and "binary data" in response.json()["error"]
