"""Export a training checkpoint to a bundle.

python -m export --checkpoint PATH --out DIR [--int8 --calib-images DIR [--calib-split FILE] [--calib-count N]]
                 [--fp16] [--tensorrt] [--triton DIR] [--name NAME --version VER] [--grouping-scenes DIR]
                 [--proposal-sources LIST] [--quality-head PT] [--saliency-floor A]

Prints one JSON report on stdout; exits 2 with the reason on stderr when the export fails its checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from export.accuracy import DEFAULT_DATA_ROOT
from export.bundle import ExportError, ExportOptions, export_bundle
from export.parity import ParityError


def parse_args(argv: list[str] | None = None) -> ExportOptions:
    parser = argparse.ArgumentParser(
        prog="python -m export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="training checkpoint (.pt)")
    parser.add_argument("--out", type=Path, required=True, help="bundle folder to write (replaced atomically)")
    parser.add_argument("--int8", action="store_true", help="add a static QDQ int8 variant (needs --calib-images)")
    parser.add_argument("--calib-images", type=Path, help="folder of real images for int8 calibration")
    parser.add_argument("--calib-split", type=Path, help="only the stems listed in this file (e.g. a train split)")
    parser.add_argument("--calib-count", type=int, default=100, help="calibration images to use (default 100)")
    parser.add_argument("--fp16", action="store_true", help="add an fp16 variant (for GPUs; IO stays fp32)")
    parser.add_argument("--tensorrt", action="store_true", help="build a TensorRT engine when a GPU is present")
    parser.add_argument("--triton", type=Path, help="also write a Triton model repository into this folder")
    parser.add_argument("--name", help="bundle name in the manifest (default: the model name)")
    parser.add_argument("--version", help="bundle version (default: <run name>-e<epoch>)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="labelled data (ECSSD_val)")
    parser.add_argument("--parity-images", type=Path, help="real images for the parity check")
    parser.add_argument("--speed-runs", type=int, default=30, help="timed runs per speed measurement")
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--grouping-scenes", type=Path, help="co-saliency models: validation scenes to choose the grouping settings on"
    )
    parser.add_argument(
        "--quality-head",
        type=Path,
        help="co-saliency models: an instance quality head to add (training.train_instance_quality's best.pt)",
    )
    parser.add_argument(
        "--proposal-sources",
        type=lambda text: tuple(part for part in text.split(",") if part),
        help="co-saliency models: comma list of the instance sources to choose among (default: all the bundle offers)",
    )
    parser.add_argument(
        "--saliency-floor",
        type=float,
        default=0.0,
        help="saliency below this probability answers 0, the rest stretched to [0, 1] (training.fit_saliency_floor)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.saliency_floor < 1:
        parser.error("--saliency-floor must lie in [0, 1)")
    if args.int8 and args.calib_images is None:
        parser.error("--int8 needs --calib-images DIR")
    return ExportOptions(
        checkpoint=args.checkpoint,
        out=args.out,
        int8=args.int8,
        calib_images=args.calib_images,
        calib_split=args.calib_split,
        calib_count=args.calib_count,
        fp16=args.fp16,
        tensorrt=args.tensorrt,
        triton=args.triton,
        name=args.name,
        version=args.version,
        data_root=args.data_root,
        parity_images=args.parity_images,
        speed_runs=args.speed_runs,
        threads=args.threads,
        grouping_scenes=args.grouping_scenes,
        quality_head=args.quality_head,
        proposal_sources=args.proposal_sources,
        saliency_floor=args.saliency_floor,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    options = parse_args(argv)
    try:
        report = export_bundle(options)
    except (ParityError, ExportError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
