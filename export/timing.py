"""Latency measurement shared by the export (speed recorded in the manifest) and the bench CLI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Latency:
    """Per-image latency of one variant at one batch size, from ``runs`` timed calls after warm-up."""

    batch: int
    runs: int
    median_ms: float
    p90_ms: float

    def to_dict(self) -> dict[str, float | int]:
        return {
            "batch": self.batch,
            "runs": self.runs,
            "median_ms_per_image": round(self.median_ms, 3),
            "p90_ms_per_image": round(self.p90_ms, 3),
        }


def measure(run_once: Callable[[], object], batch: int, runs: int, warmup: int = 3) -> Latency:
    """Time ``run_once`` (one inference of ``batch`` images) ``runs`` times after ``warmup`` untimed calls."""
    if runs < 1:
        raise ValueError("runs must be >= 1")
    for _ in range(warmup):
        run_once()
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run_once()
        seconds.append(time.perf_counter() - start)
    per_image_ms = np.asarray(seconds) * 1000.0 / batch
    return Latency(batch, runs, float(np.median(per_image_ms)), float(np.percentile(per_image_ms, 90)))
