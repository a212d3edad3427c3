"""Against a real server (``python -m service`` under uvicorn on a free loopback port): the client and load
generator CLIs, Triton's own HTTP client (``tritonclient[http]``) over the KServe v2 routes, graceful stop, and the
demo page in headless Chromium."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.imaging import preprocess, resize_map, to_uint8
from service.manifest import load_manifest
from tests.service.conftest import encode, scene

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def launched(bundle_dir: Path, log: Path, **env: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """``python -m service`` on a free loopback port with ``SALIENCY_*`` overrides, once it is ready."""
    port = free_port()
    variables = {**os.environ, "SALIENCY_LOG_JSON": "true", **{f"SALIENCY_{k.upper()}": v for k, v in env.items()}}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--bundle", str(bundle_dir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=variables,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                raise AssertionError(f"server exited: {log.read_text()}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError(f"server never became ready: {log.read_text()}")
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def log_records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    with launched(bundle_dir, log) as (process, url):
        yield url
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()  # a drained server exits 0
    records = log_records(log)
    assert any(r["message"] == "stopped" for r in records)  # the lifespan's drain ran
    assert any(r.get("request_id", "-") != "-" for r in records)  # access logs carry the request id


def test_client_cli_saves_maps_and_fails_on_errors(server: str, tmp_path: Path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    (images / "a.png").write_bytes(encode(scene(60, 40, seed=1)))
    (images / "b.jpg").write_bytes(encode(scene(50, 70, seed=2), "JPEG"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "service.client", str(images / "a.png"), str(images / "b.jpg")]
    result = subprocess.run(
        [*cmd, "--url", server, "--out", str(out), "--outputs", "saliency,attention"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["ok"] == 2 and summary["failures"] == []
    assert Image.open(out / "a.saliency.png").size == (60, 40)
    assert Image.open(out / "b.saliency.png").size == (50, 70)
    body = json.loads((out / "a.json").read_text())
    assert "saliency_png" not in body and body["image"] == {"width": 60, "height": 40}
    heatmaps = sorted(out.glob("a.attention0.*.png"))
    assert len(heatmaps) == len(body["attention"][0]["maps"]) and heatmaps
    (images / "bad.png").write_bytes(b"not an image")
    result = subprocess.run(
        [sys.executable, "-m", "service.client", str(images / "bad.png"), "--url", server, "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and json.loads(result.stdout)["failures"][0]["status"] == "415"
    other = httpx.get(f"{server}/models").json()["models"][-1]["name"]
    result = subprocess.run(
        [*cmd[:4], "--url", server, "--out", str(out / "other"), "--model", other],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "other" / "a.json").read_text())["model"]["name"] == other


def test_loadtest_cli(server: str, tmp_path: Path) -> None:
    image = tmp_path / "img.png"
    image.write_bytes(encode(scene(80, 60)))
    result = subprocess.run(
        [sys.executable, "-m", "service.loadtest", "--url", server, "--image", str(image), "--requests", "12",
         "--concurrency", "4"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["status_counts"] == {"200": 12}
    latency = summary["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert summary["throughput_rps"] > 0
    # The load went through the batcher: the server's own metrics count it.
    metrics = httpx.get(f"{server}/metrics").text
    assert re.search(
        r'saliency_requests_total\{method="POST",model="[^"]+",protocol="saliency",route="/saliency",'
        r'status="200"\}',
        metrics,
    )


@pytest.mark.browser
def test_demo_page_in_chromium(server: str, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    picture = tmp_path / "picture.png"
    picture.write_bytes(encode(scene(160, 120, seed=4)))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(server + "/")
            page.set_input_files("#file", str(picture))
            page.wait_for_function("document.getElementById('overlay').naturalWidth > 0", timeout=60_000)
            assert page.evaluate("document.getElementById('overlay').naturalWidth") == 160
            assert page.evaluate("document.getElementById('overlay').naturalHeight") == 120
            assert "error" not in (page.get_attribute("#status", "class") or "")
            # Click a pixel: its global and local attention maps are drawn.
            page.click("#overlay", position={"x": 20, "y": 20})
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Attention of pixel')")
            outputs = page.eval_on_selector_all("canvas.attention-map", "cs => cs.map(c => c.dataset.output)")
            assert "attn_global" in outputs and any(o.startswith("attn_local") for o in outputs)
            shot = np.asarray(Image.open(__import__("io").BytesIO(page.screenshot())).convert("RGB"))
            assert shot.std() > 5  # something was painted, not a blank page
            # The picker lists every served model; each one answers, and a click shows that model's attention maps.
            models = httpx.get(f"{server}/models").json()["models"]
            assert page.eval_on_selector_all("#model option", "os => os.map(o => o.value)") == [
                m["name"] for m in models
            ]
            for model in [*models[1:], models[0]] if len(models) > 1 else []:  # each a change of the picker
                page.select_option("#model", model["name"])
                page.wait_for_function(
                    "([name]) => document.getElementById('overlay-caption').textContent.startsWith(name + ' ') "
                    "&& document.getElementById('status').textContent.startsWith('Done')",
                    arg=[model["name"]],
                )
                attention = [o["name"] for o in model["outputs"] if o["kind"] == "attention"]
                image_maps = page.eval_on_selector_all(
                    "canvas.image-attention-map", "cs => cs.map(c => c.dataset.output)"
                )
                assert image_maps == attention, model["name"]  # where it looked over the whole image
                if "attention" not in model["options"]:
                    continue
                page.click("#overlay", position={"x": 30, "y": 40})
                page.wait_for_function("document.getElementById('status').textContent.startsWith('Attention of pixel')")
                shown = page.eval_on_selector_all("canvas.attention-map", "cs => cs.map(c => c.dataset.output)")
                assert shown == attention, model["name"]
            if len(models) > 1:
                page.click("#compare")
                page.wait_for_function("document.getElementById('status').textContent === 'Compared.'")
                assert page.eval_on_selector_all("img.compared-map", "ms => ms.length") == len(models)
        finally:
            browser.close()


@pytest.fixture(scope="module")
def triton_client(server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    yield client
    client.close()


def _saliency_endpoint_map(server: str, data: bytes) -> np.ndarray:
    response = httpx.post(f"{server}/saliency", files={"image": ("x.png", data)}, params={"format": "png"}, timeout=60)
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _as_served(v2_saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A v2 saliency tensor at the model's resolution, resized and quantised as /saliency does."""
    return to_uint8(np.clip(resize_map(v2_saliency[0], size), 0.0, 1.0))


def test_triton_client_reads_server_and_model_metadata(
    triton_client: triton.InferenceServerClient, bundle_dir: Path
) -> None:
    manifest = load_manifest(bundle_dir)
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert "binary_tensor_data" in server["extensions"]
    meta = triton_client.get_model_metadata(manifest.name)
    assert meta["versions"] == [manifest.version]
    size = manifest.preprocess.input_size
    inputs = {(i["name"], i["datatype"], tuple(i["shape"])) for i in meta["inputs"]}
    assert inputs == {("image", "BYTES", (-1,)), ("image", "FP32", (-1, 3, size, size))}
    assert [o["name"] for o in meta["outputs"]] == [o.name for o in manifest.outputs]
    assert triton_client.is_model_ready(manifest.name)
    assert triton_client.is_model_ready("default", manifest.version)
    index = triton_client.get_model_repository_index()
    assert index[0] == {"name": manifest.name, "version": manifest.version, "state": "READY"}  # the default first
    assert {e["state"] for e in index} == {"READY"} and len({e["name"] for e in index}) == len(index)
    for entry in index[1:]:  # every other model of the repository answers its own metadata
        assert triton_client.get_model_metadata(entry["name"])["versions"] == [entry["version"]]
    with pytest.raises(InferenceServerException) as info:
        triton_client.get_model_metadata("no_such_model")
    assert info.value.status() == "404" and "no_such_model" in info.value.message()


@pytest.mark.parametrize("binary", [False, True], ids=["json_tensors", "binary_data"])
def test_triton_inference_equals_the_saliency_endpoint(
    triton_client: triton.InferenceServerClient, server: str, bundle_dir: Path, binary: bool
) -> None:
    manifest = load_manifest(bundle_dir)
    files = [encode(scene(90, 60, seed=3)), encode(scene(64, 80, seed=4), "JPEG")]
    # In JSON a BYTES element is text, so the file travels in base64; binary data carries the raw file.
    elements = files if binary else [base64.b64encode(f) for f in files]
    image = triton.InferInput("image", [len(files)], "BYTES")
    image.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    wanted = [triton.InferRequestedOutput("saliency", binary_data=binary)]
    result = triton_client.infer("default", [image], outputs=wanted, request_id="r-1")
    saliency = result.as_numpy("saliency")
    assert saliency.dtype == np.float32 and saliency.shape[:2] == (2, 1)
    assert result.get_response()["model_name"] == manifest.name and result.get_response()["id"] == "r-1"
    for data, v2_map in zip(files, saliency, strict=True):
        served = _saliency_endpoint_map(server, data)
        np.testing.assert_array_equal(_as_served(v2_map, served.shape[::-1]), served)


def test_triton_preprocessed_tensor_inference(triton_client: triton.InferenceServerClient, bundle_dir: Path) -> None:
    manifest = load_manifest(bundle_dir)
    data = encode(scene(70, 50, seed=5))
    pixels = preprocess(Image.open(io.BytesIO(data)).convert("RGB"), manifest.preprocess)[None]
    tensor = triton.InferInput("image", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    from_tensor = triton_client.infer(manifest.name, [tensor]).as_numpy("saliency")
    encoded = triton.InferInput("image", [1], "BYTES")
    encoded.set_data_from_numpy(np.array([data], dtype=np.object_))
    from_file = triton_client.infer(manifest.name, [encoded]).as_numpy("saliency")
    np.testing.assert_allclose(from_tensor, from_file, atol=1e-5)
    # Without a list of outputs, every output of the bundle comes back (Triton's behaviour).
    every = triton_client.infer(manifest.name, [tensor]).get_response()["outputs"]
    assert [o["name"] for o in every] == [o.name for o in manifest.outputs]


def test_triton_bad_requests_get_the_protocols_error(triton_client: triton.InferenceServerClient, server: str) -> None:
    wrong = triton.InferInput("pixels", [1], "BYTES")
    wrong.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("default", [wrong])
    assert info.value.status() == "400" and "one input named 'image'" in info.value.message()
    corrupt = triton.InferInput("image", [1], "BYTES")
    corrupt.set_data_from_numpy(np.array([b"not an image"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as info:
        triton_client.infer("default", [corrupt])
    assert info.value.status() in ("400", "415")
    response = httpx.post(f"{server}/v2/models/default/infer", content=b"{not json", timeout=30)
    assert response.status_code == 400 and set(response.json()) == {"error"}
    metrics = httpx.get(f"{server}/metrics").text
    assert 'protocol="kserve_v2",route="/v2/models/{name}/infer",status="400"' in metrics


def test_slow_oversized_and_excess_connections_are_cut_off(bundle_dir: Path, tmp_path: Path) -> None:
    limits = {"header_timeout_s": "1", "max_header_bytes": "8192", "max_connections": "4"}
    with launched(bundle_dir, tmp_path / "server.log", **limits) as (_, url):
        host, port = url.removeprefix("http://").split(":")
        address = (host, int(port))
        with socket.create_connection(address, timeout=15) as slow:  # slowloris: a head that never ends
            slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
            assert slow.recv(1024) == b""  # closed by the server once the head timeout passed
        with socket.create_connection(address, timeout=15) as big:
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n")
            assert big.recv(1024).startswith(b"HTTP/1.1 431")
        idle = [socket.create_connection(address, timeout=15) for _ in range(4)]
        try:
            assert httpx.get(f"{url}/healthz", timeout=15).status_code == 503  # over max_connections
        finally:
            for sock in idle:
                sock.close()
        for _ in range(100):  # closed connections are released
            if httpx.get(f"{url}/healthz", timeout=15).status_code == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("connections were not released")


def test_sigterm_lets_admitted_requests_finish(bundle_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    data = encode(scene(1600, 1200, seed=11), "JPEG")
    params = {"outputs": "saliency,overlay,attention"}
    statuses: list[int | str] = []

    def post(url: str) -> None:
        try:
            response = httpx.post(f"{url}/saliency", params=params, files={"image": ("a.jpg", data)}, timeout=120)
            statuses.append(response.status_code)
        except httpx.TransportError as exc:  # connected after the listener closed: never admitted
            statuses.append(type(exc).__name__)

    with launched(bundle_dir, log) as (process, url):
        threads = [threading.Thread(target=post, args=(url,)) for _ in range(12)]
        for thread in threads:
            thread.start()
        for _ in range(500):  # wait until requests are being served
            if 'saliency_requests_total{method="POST"' in httpx.get(f"{url}/metrics", timeout=15).text:
                break
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        assert process.wait(timeout=60) == 0, log.read_text()
    answered = [s for s in statuses if isinstance(s, int)]
    assert len(statuses) == 12 and 200 in answered
    assert set(answered) <= {200, 503}, statuses  # finished, or refused before any work: never a 5xx error
    messages = [r["message"] for r in log_records(log)]
    assert any(m.startswith("shutdown signal: draining") for m in messages) and "stopped" in messages
