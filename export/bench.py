"""Benchmark a bundle: per variant and batch size, median and p90 ms per image, and speed vs PyTorch eager.

python -m export.bench --bundle NAME_OR_DIR [--runs 30] [--threads 2] [--checkpoint PATH]

PyTorch eager runs from the bundle's source checkpoint (``manifest.source.checkpoint``, or ``--checkpoint``)
when that file exists. Inputs are fixed-seed normal noise: latency does not depend on pixel values here.
Prints one JSON object.
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


def bench(bundle: str, runs: int = 30, threads: int = 2, checkpoint: Path | None = None) -> dict[str, Any]:
    """Time every runnable variant of a bundle (and PyTorch eager if its checkpoint is here) at batch 1 and 8."""
    folder = resolve_bundle(bundle)
    manifest = load_manifest(folder)
    size = manifest.preprocess.input_size
    runners: dict[str, Any] = {}
    source = checkpoint or Path(manifest.source.checkpoint)
    skipped: dict[str, str] = {}
    if source.is_file():
        runners["pytorch_eager"] = _torch_runner(source, threads)
    else:
        skipped["pytorch_eager"] = f"source checkpoint {source} not found (pass --checkpoint)"
    for key, variant in manifest.variants.items():
        if variant.runtime != "onnxruntime":
            skipped[key] = f"runtime {variant.runtime} is not benchmarked on CPU"
            continue
        level = "disable" if key.endswith("_ort_cpu") else "all"  # pre-optimized files are loaded as they are
        session = cpu_session(folder / variant.file, threads, level)
        runners[f"ort_{key}"] = lambda x, s=session: s.run(None, {INPUT_NAME: x})
    rng = np.random.default_rng(0)
    results: dict[str, dict[str, Any]] = {}
    for batch in BATCH_SIZES:
        x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
        for name, run in runners.items():
            results.setdefault(name, {})[f"b{batch}"] = measure(lambda r=run, x=x: r(x), batch, runs).to_dict()
    if "pytorch_eager" in results:
        for per_batch in results.values():
            for key, latency in per_batch.items():
                eager = results["pytorch_eager"][key]["median_ms_per_image"]
                latency["speedup_vs_pytorch_eager"] = round(eager / latency["median_ms_per_image"], 3)
    return {
        "bundle": str(folder),
        "name": manifest.name,
        "version": manifest.version,
        "default_variant": manifest.default_variant,
        "input_size": size,
        "threads": threads,
        "runs": runs,
        "results": results,
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
    args = parser.parse_args(argv)
    print(json.dumps(bench(args.bundle, args.runs, args.threads, args.checkpoint), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
