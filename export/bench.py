"""Benchmark a bundle: per variant and batch size, median and p90 ms per image, and speed vs PyTorch eager.

python -m export.bench --bundle NAME_OR_DIR [--runs 30] [--threads 2] [--checkpoint PATH] [--baseline NAME_OR_DIR]
    [--also NAME,NAME]

PyTorch eager runs from the bundle's source checkpoint (``manifest.source.checkpoint``, or ``--checkpoint``)
when that file exists. ``--baseline`` times another bundle's ONNX Runtime variants in the same loop (runners
interleaved per batch size, so both see the same machine load) and reports the latency ratio; ``--also`` times
more bundles in that loop (results ``<bundle>:ort_<variant>``), e.g. every model a server serves. Inputs are
fixed-seed normal noise: latency does not depend on pixel values here. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.onnx_export import INPUT_NAME
from export.parity import cpu_session
from export.timing import measure
from service.manifest import load_manifest, resolve_bundle

BATCH_SIZES = (1, 8)


def _torch_runner(checkpoint: Path, threads: int):
    import torch

    from export.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model = load_checkpoint(checkpoint).model

    def run(x: np.ndarray) -> object:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(x)).final)

    return run


def _session_runner(session: Any) -> Any:
    def run(x: np.ndarray) -> object:
        return session.run(None, {INPUT_NAME: x})

    return run


def _ort_runners(folder: Path, threads: int, prefix: str, skipped: dict[str, str]) -> dict[str, tuple[Any, int]]:
    """``name -> (run, input size)`` for every variant of a bundle that ONNX Runtime runs on the CPU."""
    manifest = load_manifest(folder)
    runners = {}
    for key, variant in manifest.variants.items():
        if variant.runtime != "onnxruntime":
            skipped[prefix + key] = f"runtime {variant.runtime} is not benchmarked on CPU"
            continue
        session = cpu_session(folder / variant.file, threads)
        runners[f"{prefix}ort_{key}"] = (
            (lambda x, s=session: s.run(None, {INPUT_NAME: x})),
            manifest.preprocess.input_size,
        )
    return runners


def bench(
    bundle: str,
    runs: int = 30,
    threads: int = 2,
    checkpoint: Path | None = None,
    baseline: str | None = None,
    also: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Time every runnable variant of a bundle (and PyTorch eager if its checkpoint is here) at batch 1 and 8,
    and those of a ``baseline`` bundle and of the ``also`` bundles in the same loop."""
    folder = resolve_bundle(bundle)
    manifest = load_manifest(folder)
    size = manifest.preprocess.input_size
    runners: dict[str, tuple[Any, int]] = {}
    source = checkpoint or Path(manifest.source.checkpoint)
    skipped: dict[str, str] = {}
    if source.is_file():
        runners["pytorch_eager"] = _torch_runner(source, threads), size
    else:
        skipped["pytorch_eager"] = f"source checkpoint {source} not found (pass --checkpoint)"
    runners |= _ort_runners(folder, threads, "", skipped)
    baseline_manifest = None
    if baseline is not None:
        baseline_folder = resolve_bundle(baseline)
        baseline_manifest = load_manifest(baseline_folder)
        runners |= _ort_runners(baseline_folder, threads, "baseline_", skipped)
    for other in also:
        other_folder = resolve_bundle(other)
        runners |= _ort_runners(other_folder, threads, f"{other_folder.name}:", skipped)
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, Any]] = {}
    for batch in BATCH_SIZES:
        inputs = {s: rng.standard_normal((batch, 3, s, s), dtype=np.float32) for s in {s for _, s in runners.values()}}
        for name, (run, side) in runners.items():
            x = inputs[side]
            results.setdefault(name, {})[f"b{batch}"] = measure(lambda r=run, x=x: r(x), batch, runs).to_dict()
    if "pytorch_eager" in results:
        for per_batch in results.values():
            for key, latency in per_batch.items():
                eager = results["pytorch_eager"][key]["median_ms_per_image"]
                latency["speedup_vs_pytorch_eager"] = round(eager / latency["median_ms_per_image"], 3)
    comparison = None
    if baseline_manifest is not None and "baseline_ort_fp32" in results:
        reference = results["baseline_ort_fp32"]
        comparison = {
            "baseline": f"{baseline_manifest.name} {baseline_manifest.version} ort_fp32",
            "median_ms_per_image_vs_baseline": {
                name: {
                    b: round(t["median_ms_per_image"] / reference[b]["median_ms_per_image"], 3) for b, t in r.items()
                }
                for name, r in results.items()
                if name.startswith("ort_") or ":ort_" in name
            },
        }
    return {
        "bundle": folder.name,
        "name": manifest.name,
        "version": manifest.version,
        "default_variant": manifest.default_variant,
        "input_size": size,
        "threads": threads,
        "runs": runs,
        "results": results,
        "latency_ratio": comparison,
        "skipped": skipped,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m export.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default="default", help="bundle name under bundles/ or a bundle folder")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per variant and batch size (>= 30)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT and torch")
    parser.add_argument("--checkpoint", type=Path, help="checkpoint for PyTorch eager (default: manifest source)")
    parser.add_argument("--baseline", help="another bundle to time in the same loop (latency ratio reported)")
    parser.add_argument("--also", default="", help="comma list of more bundles to time in the same loop")
    args = parser.parse_args(argv)
    also = tuple(name.strip() for name in args.also.split(",") if name.strip())
    print(json.dumps(bench(args.bundle, args.runs, args.threads, args.checkpoint, args.baseline, also), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
