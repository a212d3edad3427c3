"""ONNX Runtime vs PyTorch on real images, output by output; the export fails when they disagree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from export.onnx_export import INPUT_NAME, ExportWrapper


class ParityError(RuntimeError):
    """An exported output differs from PyTorch by more than the tolerance; the message lists the outputs."""


def cpu_session(path: str | Path, threads: int = 2, level: str = "all") -> ort.InferenceSession:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads (inter-op 1: the graph is sequential)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def max_abs_diff(
    wrapper: ExportWrapper, session: ort.InferenceSession, images: np.ndarray, batch_size: int = 2
) -> dict[str, float]:
    """Largest absolute difference between PyTorch and ONNX Runtime per output name, over all ``images``, divided by
    the output's largest PyTorch magnitude where that exceeds 1: probabilities, weights and box fractions are compared
    absolutely, unbounded features (a co-saliency bundle's encoder features reach ~20) relative to their scale."""
    names = [o.name for o in session.get_outputs()]
    worst = dict.fromkeys(names, 0.0)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        with torch.no_grad():
            expected = [t.numpy() for t in wrapper(torch.from_numpy(batch))]
        got = session.run(names, {INPUT_NAME: batch})
        for name, e, g in zip(names, expected, got, strict=True):
            if e.shape != g.shape:
                raise ParityError(f"output {name}: ONNX Runtime shape {g.shape} != PyTorch shape {e.shape}")
            scale = max(1.0, float(np.max(np.abs(e), initial=0.0)))
            difference = float(np.max(np.abs(e.astype(np.float64) - g.astype(np.float64)), initial=0.0))
            worst[name] = max(worst[name], difference / scale)
    return worst


def top_weight_agreement(
    reference: ort.InferenceSession,
    candidate: ort.InferenceSession,
    images: np.ndarray,
    names: list[str],
    batch_size: int = 2,
) -> dict[str, float]:
    """For per-pixel attention outputs ``[B,K,h,w]``: the fraction of pixels whose largest weight sits on the same
    cell in both sessions (what a user reads from a clicked pixel's attention)."""
    if not names:  # ONNX Runtime reads an empty list of output names as "every output"
        return {}
    same = dict.fromkeys(names, 0)
    total = dict.fromkeys(names, 0)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        expected = reference.run(names, {INPUT_NAME: batch})
        got = candidate.run(names, {INPUT_NAME: batch})
        for name, e, g in zip(names, expected, got, strict=True):
            top_e, top_g = e.argmax(axis=1), g.argmax(axis=1)
            same[name] += int((top_e == top_g).sum())
            total[name] += top_e.size
    return {name: same[name] / total[name] for name in names if total[name]}


def check_parity(diffs: dict[str, float], tolerance: float, what: str) -> None:
    """Raise :class:`ParityError` naming every output whose difference exceeds ``tolerance``."""
    bad = {k: v for k, v in diffs.items() if not v <= tolerance}  # `not <=` also catches NaN
    if bad:
        detail = ", ".join(f"{k}: {v:.3g}" for k, v in bad.items())
        raise ParityError(f"{what} differs from PyTorch by more than {tolerance:g} (max abs diff): {detail}")
