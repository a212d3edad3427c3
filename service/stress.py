"""``python -m service.stress [--bundle NAME_OR_DIR] [--fuzz N]``: the hostile-client scenarios, as a benchmark.

Starts its own server (``python -m service`` on a free loopback port, default settings, ``MALLOC_ARENA_MAX=2`` as
deployed) so that it can read the server's peak RSS per scenario (``/proc/<pid>/status`` VmHWM, reset through
``clear_refs`` before each scenario) and send it SIGTERM at the end. Every scenario is bounded in requests and time and
talks to 127.0.0.1 only. Prints one JSON object: per scenario the answers by status, latencies, and the server's peak
RSS in MiB.

Scenarios: a quiet baseline; a 45 KB GIF that decodes to 6000×6000 and a 4000×4000 JPEG, each asking for every
output the default model answers (groups too when a co-saliency model is served) and 16 attention points; normal
requests beside two such heavy requests; 32 concurrent 36-megapixel GIFs; 50 concurrent 15 MB JPEGs; 200 slowloris
connections and a 64 MB header; a fuzz of mutated images and malformed requests; and SIGTERM with 32 long requests in
flight.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image


def _points(width: int, height: int) -> str:
    return ";".join(
        f"{x},{y}" for x in np.linspace(1, width - 2, 4, dtype=int) for y in np.linspace(1, height - 2, 4, dtype=int)
    )


def _encode(img: Image.Image, fmt: str, **args: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **args)
    return buffer.getvalue()


def sparse_gif(side: int) -> bytes:
    """A tiny file that decodes to side² pixels (flat palette image with one block)."""
    pixels = np.zeros((side, side), np.uint8)
    pixels[side // 3 : side // 2, side // 3 : side // 2] = 1
    img = Image.fromarray(pixels, mode="P")
    img.putpalette([30, 60, 90, 250, 240, 40] + [0] * 762)
    return _encode(img, "GIF")


def smooth_jpeg(width: int, height: int, quality: int = 85) -> bytes:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([xx / width * 255, yy / height * 255, 128 + 60 * np.sin(xx / 97)], axis=-1)
    return _encode(Image.fromarray(rgb.astype(np.uint8)), "JPEG", quality=quality)


def noisy_jpeg(megabytes: float, seed: int = 0) -> bytes:
    """A JPEG of noise of about ``megabytes`` (noise barely compresses)."""
    rng = np.random.default_rng(seed)
    side = int((megabytes * 2**20 / 1.5) ** 0.5)
    return _encode(Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)), "JPEG", quality=95)


def normal_png(seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 90, (300, 400, 3)).astype(np.uint8)
    pixels[100:200, 150:260] = (230, 200, 40)
    return _encode(Image.fromarray(pixels), "PNG")


class Server:
    """The server process, its URL, and its peak RSS since the last reset."""

    def __init__(self, bundle: str, log: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "--port", str(port), "--bundle", bundle],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={"MALLOC_ARENA_MAX": "2"} | dict(os.environ),  # as deployed (Dockerfiles, make serve)
            )
        for _ in range(600):
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("server never became ready")
        models = httpx.get(f"{self.url}/models", timeout=10).json()["models"]
        # every output the default model answers (groups too when a co-saliency model is served)
        self.all_outputs = {"outputs": ",".join(next(m for m in models if m["default"])["options"])}

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise RuntimeError("no VmHWM")


def _summary(statuses: Counter, latencies: list[float]) -> dict[str, Any]:
    ms = np.asarray(latencies) * 1e3 if latencies else np.zeros(1)
    return {
        "status_counts": dict(sorted(statuses.items())),
        "latency_ms": {q: round(float(np.percentile(ms, p)), 1) for q, p in (("p50", 50), ("p99", 99), ("max", 100))},
    }


async def _post_many(url: str, jobs: list[tuple[str, dict, dict]], concurrency: int, timeout: float = 120) -> dict:
    """POST ``(path, params, files)`` jobs with ``concurrency`` in flight; statuses, latencies, response bytes."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    largest = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    queue = list(jobs)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            nonlocal largest
            while queue:
                path, params, files = queue.pop()
                start = time.perf_counter()
                try:
                    response = await client.post(path, params=params, files=files)
                    statuses[str(response.status_code)] += 1
                    largest = max(largest, len(response.content))
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _summary(statuses, latencies) | {"largest_response_bytes": largest}


def scenario(server: Server, name: str, results: dict, run: Any) -> None:
    server.reset_peak()
    began = time.perf_counter()
    outcome = run()
    if asyncio.iscoroutine(outcome):
        outcome = asyncio.run(outcome)
    outcome.update(seconds=round(time.perf_counter() - began, 1), peak_rss_mib=server.peak_rss_mib())
    results[name] = outcome
    print(f"{name}: {json.dumps(outcome)}", file=sys.stderr, flush=True)


def _slowloris(url: str, connections: int, wait_s: float) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, int(port)), timeout=wait_s + 10)
        sock.sendall(b"POST /saliency HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n")
        socks.append(sock)
    normal = httpx.get(f"{url}/healthz", timeout=10).status_code  # served beside them
    time.sleep(wait_s)
    closed = 0
    for sock in socks:
        sock.settimeout(5)
        try:
            closed += sock.recv(1024) == b""
        except OSError:
            closed += 1
        sock.close()
    with socket.create_connection((host, int(port)), timeout=30) as big:
        began = time.perf_counter()
        answer = b""
        try:
            chunk = b"a" * 2**20
            big.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(64):
                big.sendall(chunk)
        except OSError:
            pass  # the server closed the connection while we were still sending
        try:
            answer = big.recv(1024)
        except OSError:
            answer = b""
    return {
        "slow_connections": connections,
        "closed_by_server": closed,
        "healthz_beside_them": normal,
        "header_64mb_answer": answer.split(b"\r\n", 1)[0].decode(errors="replace") or "connection closed",
        "header_64mb_seconds": round(time.perf_counter() - began, 2),
    }


def _mutations(seed: int, count: int, all_outputs: dict[str, str]) -> list[tuple[str, dict, dict]]:
    rng = random.Random(seed)
    bases = [
        normal_png(1),
        smooth_jpeg(300, 200),
        sparse_gif(200),
        _encode(Image.new("RGB", (120, 90), "teal"), "WEBP"),
    ]
    jobs: list[tuple[str, dict, dict]] = []
    malformed = [
        ("/saliency", {}, {"file": ("x.png", bases[0])}),  # wrong field name
        ("/saliency", {"outputs": "bogus"}, {"image": ("x.png", bases[0])}),
        ("/saliency", {"points": "1,2,3"}, {"image": ("x.png", bases[0])}),
        ("/saliency", {"max_side": "-4"}, {"image": ("x.png", bases[0])}),
        ("/saliency/batch", {}, {"images": ("x.png", b"")}),
        ("/api/remove", {"bgc": "1,2"}, {"file": ("x.png", bases[0])}),
        ("/v2/models/default/infer", {}, {"image": ("x", b"{}")}),
    ]
    for index in range(count):
        if index % 10 == 0:
            jobs.append(malformed[(index // 10) % len(malformed)])
            continue
        data = bytearray(rng.choice(bases))
        kind = rng.randrange(3)
        if kind == 0:  # flip bytes
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1:  # truncate
            data = data[: rng.randrange(1, len(data))]
        else:  # splice junk in
            at = rng.randrange(len(data))
            data[at:at] = os.urandom(rng.randint(1, 64))
        path = rng.choice(["/saliency", "/api/remove"])
        field = "image" if path == "/saliency" else "file"
        params = all_outputs if path == "/saliency" and rng.random() < 0.3 else {}
        jobs.append((path, params, {field: ("fuzz.bin", bytes(data))}))
    return jobs


def _sigterm_under_load(server: Server, in_flight: int) -> dict[str, Any]:
    data = smooth_jpeg(2000, 1500)
    statuses: Counter[str] = Counter()

    async def load() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:

            async def one() -> None:
                try:
                    files = {"image": ("a.jpg", data)}
                    response = await client.post("/saliency", params=server.all_outputs, files=files)
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

            tasks = [asyncio.create_task(one()) for _ in range(in_flight)]
            await asyncio.sleep(1.0)  # all connected and uploading or being served
            server.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*tasks)

    began = time.perf_counter()
    asyncio.run(load())
    code = server.process.wait(timeout=120)
    five_xx = sum(n for s, n in statuses.items() if s.isdigit() and s.startswith("5") and s != "503")
    return {
        "status_counts": dict(sorted(statuses.items())),
        "exit_code": code,
        "5xx_other_than_503": five_xx,
        "seconds": round(time.perf_counter() - began, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", default="default")
    parser.add_argument("--fuzz", type=int, default=2000, help="mutated images and malformed requests to send")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "saliency_stress_server.log")
    args = parser.parse_args(argv)
    server = Server(args.bundle, args.log)
    results: dict[str, Any] = {"bundle": args.bundle}
    normal = normal_png()
    gif = sparse_gif(6000)
    jpeg = smooth_jpeg(4000, 4000)
    heavy_gif = ("/saliency", server.all_outputs | {"points": _points(6000, 6000)}, {"image": ("big.gif", gif)})
    heavy_jpeg = ("/saliency", server.all_outputs | {"points": _points(4000, 4000)}, {"image": ("big.jpg", jpeg)})
    plain = ("/saliency", {}, {"image": ("n.png", normal)})
    results["inputs"] = {"gif_bytes": len(gif), "jpeg_bytes": len(jpeg), "normal_png_bytes": len(normal)}
    try:
        scenario(server, "quiet_normal", results, lambda: _post_many(server.url, [plain] * 60, 1))
        scenario(server, "gif_6000x6000_all_outputs_16_points", results, lambda: _post_many(server.url, [heavy_gif], 1))
        scenario(
            server, "jpeg_4000x4000_all_outputs_16_points", results, lambda: _post_many(server.url, [heavy_jpeg], 1)
        )

        async def beside() -> dict:
            heavy = asyncio.create_task(_post_many(server.url, [heavy_gif, heavy_jpeg] * 3, 2))
            await asyncio.sleep(0.2)
            light = await _post_many(server.url, [plain] * 60, 1)
            return {"normal": light, "heavy": await heavy}

        scenario(server, "normal_beside_two_heavy", results, beside)
        quiet_p99 = results["quiet_normal"]["latency_ms"]["p99"]
        loaded_p99 = results["normal_beside_two_heavy"]["normal"]["latency_ms"]["p99"]
        results["normal_beside_two_heavy"]["p99_vs_quiet"] = round(loaded_p99 / quiet_p99, 2)
        scenario(server, "32_concurrent_36mp_gifs", results, lambda: _post_many(server.url, [heavy_gif] * 32, 32))
        big = noisy_jpeg(15)
        results["inputs"]["noisy_jpeg_bytes"] = len(big)
        jobs = [("/saliency", {}, {"image": ("n.jpg", big)})] * 50
        scenario(server, "50_concurrent_15mb_jpegs", results, lambda: _post_many(server.url, jobs, 50))
        scenario(server, "slowloris_and_64mb_header", results, lambda: _slowloris(server.url, 200, 12.0))
        fuzz = _mutations(0, args.fuzz, server.all_outputs)
        scenario(server, f"fuzz_{args.fuzz}", results, lambda: _post_many(server.url, fuzz, 8, timeout=60))
        results[f"fuzz_{args.fuzz}"]["server_alive"] = httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
        server.reset_peak()
        results["sigterm_with_32_in_flight"] = _sigterm_under_load(server, 32)
    finally:
        if server.process.poll() is None:
            server.process.kill()
    peaks = [v["peak_rss_mib"] for v in results.values() if isinstance(v, dict) and "peak_rss_mib" in v]
    results["max_peak_rss_mib"] = max(peaks) if peaks else None
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
