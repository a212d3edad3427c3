"""Against a real server (``python -m service`` under uvicorn on a free loopback port): the client and load
generator CLIs, graceful stop, and the demo page in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

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


@pytest.fixture(scope="module")
def server(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {**os.environ, "SALIENCY_LOG_JSON": "true"}
    with open(log, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port), "--bundle", str(bundle_dir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
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
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        # uvicorn re-raises the signal after its graceful shutdown, so the process ends "killed by SIGTERM".
        assert process.wait(timeout=30) in (0, -signal.SIGTERM), log.read_text()
        records = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
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
    assert 'saliency_requests_total{method="POST",route="/saliency",status="200"}' in metrics


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
        finally:
            browser.close()
