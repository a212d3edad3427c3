"""``python -m service.loadtest --url URL --image IMG --requests N --concurrency C``: a bounded load generator.

Sends exactly N ``POST /saliency`` requests with at most C in flight (httpx, asyncio) and prints one JSON object:
throughput, latency percentiles (ms), counts by status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np


async def run_load(
    url: str, image: bytes, filename: str, requests: int, concurrency: int, outputs: str, timeout: float
) -> dict[str, object]:
    """Send ``requests`` requests, ``concurrency`` at a time; return the summary."""
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(requests):
        queue.put_nowait(index)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                start = time.perf_counter()
                try:
                    response = await client.post(
                        "/saliency", params={"outputs": outputs}, files={"image": (filename, image)}
                    )
                    statuses[str(response.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - began
    ms = np.asarray(latencies) * 1e3
    return {
        "url": url,
        "requests": requests,
        "concurrency": concurrency,
        "outputs": outputs,
        "wall_s": round(wall, 3),
        "throughput_rps": round(requests / wall, 2),
        "latency_ms": {
            "p50": round(float(np.percentile(ms, 50)), 2),
            "p90": round(float(np.percentile(ms, 90)), 2),
            "p99": round(float(np.percentile(ms, 99)), 2),
            "mean": round(float(ms.mean()), 2),
            "max": round(float(ms.max()), 2),
        },
        "status_counts": dict(sorted(statuses.items())),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--outputs", default="saliency")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    summary = asyncio.run(
        run_load(
            args.url, args.image.read_bytes(), args.image.name, args.requests, args.concurrency, args.outputs,
            args.timeout,
        )
    )  # fmt: skip
    print(json.dumps(summary))
    return 0 if set(summary["status_counts"]) == {"200"} else 1  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
