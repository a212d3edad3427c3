"""Checkpoint → bundle folder: export, parity, graph optimization trial, int8/fp16 variants, TensorRT, manifest.

The bundle is assembled in a temporary sibling folder and renamed into place, so a failed export (parity,
accuracy, a crash) never leaves a half-written bundle where the service would load it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from export.accuracy import DEFAULT_DATA_ROOT, EvalSplit, eval_split, evaluate_session
from export.checkpoint import LoadedCheckpoint, load_checkpoint
from export.fp16 import convert_fp16
from export.images import list_images, load_batch
from export.onnx_export import (
    CROP_ENCODER_FILE,
    INPUT_NAME,
    OPSET,
    QUALITY_HEAD_FILE,
    REGION_HEAD_FILE,
    ExportedGraph,
    export_crop_encoder,
    export_onnx,
    export_quality_head,
    export_region_head,
)
from export.parity import check_parity, cpu_session, max_abs_diff, top_weight_agreement
from export.quantize import REDUCE_RANGE, quantize_int8
from export.tensorrt import build_engine, detect_tensorrt
from export.timing import measure
from export.triton import write_triton_repository
from models import model_paper
from models.cosal import InstanceQualityHead
from service.engine import Engine
from service.manifest import (
    MANIFEST_FILE,
    CropEncoderSpec,
    FileSpec,
    GroupingSpec,
    Manifest,
    PreprocessSpec,
    QualityHeadSpec,
    RegionHeadSpec,
    RejectedVariantSpec,
    SourceSpec,
    VariantSpec,
    load_manifest,
    sha256_file,
)
from training.evaluate_cosal import (
    best_per,
    calibrate,
    evaluate,
    grouping_objective,
    read_eval_scenes,
    requested_sources,
    run_bundle,
    service_quality,
    service_vectors,
    vector_kinds,
)

log = logging.getLogger(__name__)

FP32_TOLERANCE = 1e-4
# fp16 keeps ~3 significant digits; measured max abs diff on the default model's outputs was ~7e-3.
FP16_TOLERANCE = 2e-2
INT8_MAX_F_DROP = 0.005
INT8_MAE_RISE = 0.005
# int8 must also keep what a clicked pixel's attention shows: its largest weight on the same cell as fp32 for at least
# this share of the parity images' pixels (the default PiCANet kept 0.83-0.98; ARN's peaked self-attention 0.67-0.77,
# so its int8 is rejected: MODEL_CARD.md).
INT8_MIN_TOP_WEIGHT_AGREEMENT = 0.8
FIXTURE_IMAGES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sod" / "images"


class ExportError(RuntimeError):
    """The export cannot proceed (no real images for parity, a required input missing); the message says why."""


@dataclass(frozen=True)
class ExportOptions:
    """What ``python -m export`` was asked to build (see ``export/__main__.py`` for the flags)."""

    checkpoint: Path
    out: Path
    int8: bool = False
    calib_images: Path | None = None
    calib_split: Path | None = None
    calib_count: int = 100
    fp16: bool = False
    tensorrt: bool = False
    triton: Path | None = None
    name: str | None = None
    version: str | None = None
    data_root: Path = DEFAULT_DATA_ROOT
    parity_images: Path | None = None
    parity_count: int = 8
    speed_runs: int = 30
    threads: int = 2
    grouping_scenes: Path | None = None
    quality_head: Path | None = None
    proposal_sources: tuple[str, ...] | None = None  # instance sources the calibration tries (None: all offered)
    saliency_floor: float = 0.0


def _parity_images(options: ExportOptions, data: EvalSplit | None) -> list[Path]:
    if options.parity_images:
        return list_images(options.parity_images, limit=options.parity_count)
    if options.calib_images:
        return list_images(options.calib_images, options.calib_split, limit=options.parity_count)
    if data is not None:
        return [s.image for s in data.samples[: options.parity_count]]
    if FIXTURE_IMAGES.is_dir():
        return list_images(FIXTURE_IMAGES, limit=options.parity_count)
    raise ExportError(
        "no real images for the parity check: pass --parity-images DIR or --calib-images DIR "
        f"(looked for {options.data_root} and {FIXTURE_IMAGES})"
    )


def _speed(path: Path, input_size: int, options: ExportOptions) -> dict[str, float]:
    session = cpu_session(path, options.threads)
    rng = np.random.default_rng(0)
    speed: dict[str, float] = {"threads": float(options.threads)}
    for batch in (1, 8):
        x = rng.standard_normal((batch, 3, input_size, input_size), dtype=np.float32)
        latency = measure(lambda x=x: session.run(None, {INPUT_NAME: x}), batch, options.speed_runs)
        speed[f"ms_per_image_b{batch}"] = round(latency.median_ms, 3)
        speed[f"p90_ms_per_image_b{batch}"] = round(latency.p90_ms, 3)
    return speed


def _graph_optimization_trial(fp32: Path, work: Path, input_size: int, options: ExportOptions) -> dict[str, Any]:
    """Time ONNX Runtime's online BASIC vs ALL optimization and an offline ALL-optimized file (a measurement only).

    The offline file is never shipped: ALL-level optimization blocks convolutions in the NCHWc layout of the
    exporting CPU's vector width (8 channels with AVX2, 16 with AVX-512), and ONNX Runtime's documentation asks
    that an offline-optimized model run on the hardware it was optimized on, while a bundle is served wherever it
    is deployed; the service optimizes at load time on its own CPU instead. (On an AVX2-only AMD EPYC the offline
    file ran 7 % faster than online ALL.)
    """
    offline = work / "model.ort-cpu.onnx"
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.optimized_model_filepath = str(offline)
    so.log_severity_level = 3
    ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((1, 3, input_size, input_size), dtype=np.float32)
    medians = {}
    for label, path, level in (
        ("online_basic", fp32, "basic"),
        ("online_all", fp32, "all"),
        ("offline_all", offline, "disable"),
    ):
        session = cpu_session(path, options.threads, level)
        medians[label] = round(
            measure(lambda s=session: s.run(None, {INPUT_NAME: x}), 1, options.speed_runs).median_ms, 3
        )
    offline.unlink()
    return {
        "ms_per_image_b1": medians,
        "offline_gain": round(1.0 - medians["offline_all"] / medians["online_all"], 4),
        "shipped": False,
        "provider": "CPUExecutionProvider",
    }


def _default_name(ckpt: LoadedCheckpoint) -> str:
    return ckpt.model_name


def _default_version(ckpt: LoadedCheckpoint) -> str:
    run = ckpt.config.get("name", "run")
    return f"{run}-e{ckpt.epochs_completed}" if ckpt.epochs_completed is not None else str(run)


def export_bundle(options: ExportOptions) -> dict[str, Any]:
    """Build the bundle described by ``options`` and return the report ``python -m export`` prints.

    Raises:
        ParityError: an fp32 output differs from PyTorch by more than 1e-4 (or fp16 by more than 2e-2).
        ExportError: no real images are available for parity, or ``--int8`` was given without images.
    """
    if options.int8 and options.calib_images is None:
        raise ExportError("--int8 needs --calib-images DIR (real images; noise calibration wrecks int8 accuracy)")
    ckpt = load_checkpoint(options.checkpoint)
    pre = ckpt.preprocess
    size = pre.input_size
    cosal = hasattr(ckpt.model, "rfm")
    if cosal and (options.int8 or options.fp16 or options.tensorrt):
        raise ExportError(
            "co-saliency bundles are exported in fp32 only (their region vectors were not checked in lower precision)"
        )
    if options.quality_head is not None and not cosal:
        raise ExportError("--quality-head scores co-saliency instances: the checkpoint is not a co-saliency model")
    if cosal and options.grouping_scenes is None:
        raise ExportError(
            "a co-saliency model needs --grouping-scenes DIR (validation scenes from"
            " training.cosal_data) to choose its grouping settings"
        )
    # A co-saliency map is scored on scenes, not on a salient-object split.
    data = None if cosal else eval_split(options.data_root)
    out = Path(options.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    report: dict[str, Any] = {"bundle": str(out), "checkpoint": str(options.checkpoint)}
    try:
        fp32 = work / "model.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape checks that are constant at export
            graph = export_onnx(ckpt.model, fp32, size, saliency_floor=options.saliency_floor)
        parity_batch = load_batch(_parity_images(options, data), pre)
        fp32_session = cpu_session(fp32, options.threads)
        diffs = max_abs_diff(graph.wrapper, fp32_session, parity_batch)
        report["parity_fp32"] = {"images": len(parity_batch), "tolerance": FP32_TOLERANCE, "max_abs_diff": diffs}
        check_parity(diffs, FP32_TOLERANCE, "ONNX Runtime fp32")

        variants: dict[str, VariantSpec] = {}
        rejected: dict[str, RejectedVariantSpec] = {}
        accuracy32 = evaluate_session(fp32_session, data, pre) if data else None
        speed32 = _speed(fp32, size, options)
        variants["fp32"] = VariantSpec(
            file=fp32.name, precision="fp32", accuracy={data.name: accuracy32} if data else {}, speed=speed32
        )
        report["graph_optimization"] = _graph_optimization_trial(fp32, work, size, options)

        default_variant = "fp32"
        if options.int8:
            default_variant = _int8_variant(
                options,
                ckpt,
                graph,
                fp32,
                fp32_session,
                parity_batch,
                work,
                data,
                accuracy32,
                variants,
                rejected,
                report,
            )
        if options.fp16:
            fp16 = convert_fp16(fp32, work / "model.fp16.onnx")
            diffs16 = max_abs_diff(graph.wrapper, cpu_session(fp16, options.threads), parity_batch)
            report["parity_fp16_cpu"] = {"tolerance": FP16_TOLERANCE, "max_abs_diff": diffs16}
            check_parity(diffs16, FP16_TOLERANCE, "ONNX Runtime fp16 (CPU)")
            # Speed is not recorded: ORT's CPU provider runs fp16 through casts; the variant is for GPUs.
            variants["fp16"] = VariantSpec(file=fp16.name, precision="fp16")
        if options.tensorrt:
            report["tensorrt"] = _tensorrt_variant(fp32, work, size, variants)

        regions = _export_region_head(ckpt, graph, work, parity_batch, options, report) if cosal else None
        crops, quality = None, None
        if cosal:
            crops, crop_features = _export_crop_encoder(ckpt, work, parity_batch, options, report)
            if options.quality_head is not None:
                quality = _export_quality_head(options.quality_head, work, crop_features, options, report)
        manifest = Manifest(
            name=options.name or _default_name(ckpt),
            version=options.version or _default_version(ckpt),
            architecture=ckpt.model_name,
            paper=model_paper(ckpt.model_name),
            description=f"{ckpt.model_name} {json.dumps(ckpt.model_kwargs, sort_keys=True)}",
            preprocess=PreprocessSpec(input_size=size, resize=pre.resize, mean=pre.mean, std=pre.std),
            input_name=INPUT_NAME,
            outputs=graph.outputs,
            variants=variants,
            default_variant=default_variant,
            rejected_variants=rejected,
            files={
                p.name: FileSpec(sha256=sha256_file(p), bytes=p.stat().st_size)
                for p in sorted(work.iterdir())
                if p.is_file()
            },
            opset=OPSET,
            source=SourceSpec(
                checkpoint=str(options.checkpoint),
                sha256=ckpt.sha256,
                epoch=ckpt.epochs_completed,
                config=ckpt.config.get("name"),
            ),
            training_data=ckpt.training_data,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            regions=regions,
            crops=crops,
            quality=quality,
            saliency_floor=options.saliency_floor,
            grouping=_provisional_grouping() if cosal else None,
        )
        (work / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        if options.grouping_scenes is not None and cosal:
            manifest = _choose_grouping(work, manifest, options.grouping_scenes, options, report)
            (work / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
        report["variants"] = {k: v.model_dump() for k, v in manifest.variants.items()}
        load_manifest(work)  # the service's own loader must accept what we wrote
        _replace_folder(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    report["default_variant"] = default_variant
    if options.triton:
        report["triton"] = str(write_triton_repository(out, load_manifest(out), options.triton))
    return report


def _export_region_head(
    ckpt: LoadedCheckpoint,
    graph: ExportedGraph,
    work: Path,
    parity_batch: np.ndarray,
    options: ExportOptions,
    report: dict[str, Any],
) -> RegionHeadSpec:
    """Export the regional feature mapping head and check it on real regions: RoIAlign of the parity images'
    ``R`` over a grid of boxes, through PyTorch and through ONNX Runtime."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        spec, wrapper = export_region_head(ckpt.model, work / REGION_HEAD_FILE)
    size = ckpt.preprocess.input_size
    with torch.no_grad():
        embedding = [o.kind for o in graph.outputs].index("embedding")
        features = graph.wrapper(torch.from_numpy(parity_batch))[embedding]
        corners = torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.3, 0.2, 0.9, 0.7], [0.0, 0.0, 1.0, 1.0]]) * size
        rois = torch.cat([torch.cat([torch.full((3, 1), float(b)), corners], dim=1) for b in range(len(features))])
        pooled = ckpt.model.rfm.pool(features, rois).flatten(1)
        expected = wrapper(pooled).numpy()
    got = cpu_session(work / REGION_HEAD_FILE, options.threads).run(None, {spec.input_name: pooled.numpy()})[0]
    diffs = {spec.output_name: float(np.abs(got - expected).max())}
    report["parity_regions"] = {"regions": len(pooled), "tolerance": FP32_TOLERANCE, "max_abs_diff": diffs}
    check_parity(diffs, FP32_TOLERANCE, "ONNX Runtime region head")
    return spec


def _export_crop_encoder(
    ckpt: LoadedCheckpoint, work: Path, parity_batch: np.ndarray, options: ExportOptions, report: dict[str, Any]
) -> tuple[CropEncoderSpec, np.ndarray]:
    """Export the frozen encoder for instance crops and check it on real crops (the parity images' quarters); returns
    its spec and those crops' features."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        spec, wrapper = export_crop_encoder(ckpt.model, work / CROP_ENCODER_FILE)
    images = torch.from_numpy(parity_batch)
    half = images.shape[-1] // 2
    quarters = [images[:, :, y : y + half, x : x + half] for y in (0, half) for x in (0, half)]
    crops = F.interpolate(torch.cat(quarters), size=(spec.crop_size, spec.crop_size), mode="bilinear")
    with torch.no_grad():
        expected = wrapper(crops).numpy()
    got = cpu_session(work / CROP_ENCODER_FILE, options.threads).run(None, {spec.input_name: crops.numpy()})[0]
    # Relative to the largest feature: raw encoder activations run to tens, unlike the bounded outputs FP32_TOLERANCE
    # is meant for, and the service only uses their direction
    diffs = {spec.output_name: float(np.abs(got - expected).max() / max(float(np.abs(expected).max()), 1e-12))}
    report["parity_crops"] = {"crops": len(crops), "tolerance": FP32_TOLERANCE, "max_relative_diff": diffs}
    check_parity(diffs, FP32_TOLERANCE, "ONNX Runtime crop encoder (relative to its largest feature)")
    return spec, got


def _export_quality_head(
    checkpoint: Path, work: Path, crop_features: np.ndarray, options: ExportOptions, report: dict[str, Any]
) -> QualityHeadSpec:
    """Export an instance quality head (``training.train_instance_quality``'s ``best.pt``) and check it on the
    parity crops' real features, with two map channels made from them."""
    if not Path(checkpoint).is_file():
        raise ExportError(f"--quality-head {checkpoint}: no such file")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("model") != "instance_quality":
        raise ExportError(f"--quality-head {checkpoint} is not a training.train_instance_quality checkpoint")
    head = InstanceQualityHead(**state["model_kwargs"])
    head.load_state_dict(state["state_dict"])
    channels, size = crop_features.shape[1], crop_features.shape[-1]
    if (head.channels, head.size) != (channels, size):
        raise ExportError(
            f"--quality-head {checkpoint} reads {head.channels}-channel {head.size}² crop features, but this bundle's "
            f"crop encoder gives {channels}-channel {size}² ones (trained for another encoder?)"
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        source = f"{checkpoint}: {state.get('train_scenes', '')}"
        spec, wrapper = export_quality_head(head, work / QUALITY_HEAD_FILE, source)
    magnitude = np.abs(crop_features).mean(axis=1, keepdims=True)
    map_like = magnitude / max(float(magnitude.max()), 1e-12)
    inputs = np.concatenate([crop_features, map_like, map_like[:, :, ::-1]], axis=1).astype(np.float32)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(inputs)).numpy()
    got = cpu_session(work / QUALITY_HEAD_FILE, options.threads).run(None, {spec.input_name: inputs})[0]
    diffs = {spec.output_name: float(np.abs(got - expected).max())}
    report["parity_quality"] = {"candidates": len(inputs), "tolerance": FP32_TOLERANCE, "max_abs_diff": diffs}
    check_parity(diffs, FP32_TOLERANCE, "ONNX Runtime instance quality head")
    return spec


def _provisional_grouping() -> GroupingSpec:
    """Settings the bundle carries only while its own grouping settings are being chosen on validation scenes."""
    return GroupingSpec(
        proposals="rpn",
        min_score=0.5,
        nms_iou=0.5,
        max_instances=12,
        distance_threshold=0.5,
        mask_threshold=0.5,
        min_area_fraction=0.002,
        selected_on="provisional",
    )


def _choose_grouping(
    work: Path, manifest: Manifest, scenes_dir: Path, options: ExportOptions, report: dict[str, Any]
) -> Manifest:
    """Choose the instance source and clustering threshold on the validation scenes with the service's own
    grouping code running this bundle, and record the validation scores as the fp32 variant's accuracy."""
    engine = Engine(work, "fp32", ["CPUExecutionProvider"], intra_op_threads=options.threads)
    try:
        scenes = read_eval_scenes(scenes_dir)
        outputs = run_bundle(engine, scenes, progress=False)
        quality = service_quality(engine) if engine.manifest.quality else None
        vectors = service_vectors(engine, quality)
        try:
            sources = requested_sources(engine.manifest, options.proposal_sources)
        except ValueError as error:
            raise ExportError(f"--proposal-sources: {error}") from error
        kinds = vector_kinds(engine.manifest)
        table = calibrate(scenes, outputs, vectors, engine.input_size, sources, str(scenes_dir), kinds, quality)
        per_source = best_per(table, "proposals")
        scores = {
            mode: evaluate(scenes, outputs, vectors, spec, engine.input_size, quality=quality)
            for mode, spec in per_source.items()
        }
    finally:
        engine.close()
    chosen = max(scores, key=lambda mode: grouping_objective(scores[mode]))
    report["grouping"] = {"chosen": chosen, "sources": list(sources), "validation": scores}
    name = f"cosal_val:{Path(scenes_dir).name}"
    fp32 = manifest.variants["fp32"]
    accuracy = {name: {k: scores[chosen][k] for k in ("group_found", "group_found_exactly", "ari", "max_f", "mae")}}
    variants = {**manifest.variants, "fp32": fp32.model_copy(update={"accuracy": accuracy})}
    return manifest.model_copy(update={"grouping": per_source[chosen], "variants": variants})


def _int8_variant(
    options: ExportOptions,
    ckpt: LoadedCheckpoint,
    graph: ExportedGraph,
    fp32: Path,
    fp32_session: ort.InferenceSession,
    parity_images: np.ndarray,
    work: Path,
    data: EvalSplit | None,
    accuracy32: dict[str, float] | None,
    variants: dict[str, VariantSpec],
    rejected: dict[str, RejectedVariantSpec],
    report: dict[str, Any],
) -> str:
    """Quantize, measure, and ship int8 only inside the accuracy bound; returns the default variant's key."""
    calib_paths = list_images(options.calib_images, options.calib_split, limit=options.calib_count)
    int8 = work / "model.int8.onnx"
    kept_fp32 = [o.name for o in graph.outputs if o.kind in ("saliency", "attention")]
    quantize_int8(fp32, int8, load_batch(calib_paths, ckpt.preprocess), kept_fp32, first_layer_fp32=True)
    int8_session = cpu_session(int8, options.threads)
    diffs = max_abs_diff(graph.wrapper, int8_session, parity_images)
    per_pixel = [o.name for o in graph.outputs if o.attention is not None and o.attention.kind != "spatial"]
    agreement = top_weight_agreement(fp32_session, int8_session, parity_images, per_pixel)
    speed = _speed(int8, ckpt.preprocess.input_size, options)
    accuracy8 = evaluate_session(int8_session, data, ckpt.preprocess) if data else None
    entry: dict[str, Any] = {
        "calibration_images": len(calib_paths),
        "weight_bits": 7 if REDUCE_RANGE else 8,
        "max_abs_diff_vs_pytorch": diffs,
        "attention_top_weight_agreement_vs_fp32": {k: round(v, 4) for k, v in agreement.items()},
        "accuracy": {"fp32": accuracy32, "int8": accuracy8, "split": data.name if data else None},
        "speed_ms_per_image_b1": {"fp32": variants["fp32"].speed["ms_per_image_b1"], "int8": speed["ms_per_image_b1"]},
    }
    reason = None
    if accuracy8 is None or accuracy32 is None:
        reason = f"no labelled split under {options.data_root} to check int8 accuracy against fp32"
    elif (
        accuracy32["max_f"] - accuracy8["max_f"] > INT8_MAX_F_DROP
        or accuracy8["mae"] - accuracy32["mae"] > INT8_MAE_RISE
    ):
        reason = (
            f"int8 accuracy outside the bound on {data.name}: max F {accuracy8['max_f']:.4f}"
            f" vs fp32 {accuracy32['max_f']:.4f}"
            f" (allowed drop {INT8_MAX_F_DROP}), MAE {accuracy8['mae']:.4f} vs {accuracy32['mae']:.4f}"
            f" (allowed rise {INT8_MAE_RISE})"
        )
    elif any(v < INT8_MIN_TOP_WEIGHT_AGREEMENT for v in agreement.values()):
        moved = ", ".join(f"{k} {v:.2f}" for k, v in agreement.items() if v < INT8_MIN_TOP_WEIGHT_AGREEMENT)
        reason = (
            f"int8 moves the largest attention weight of too many pixels (share of pixels agreeing with fp32: {moved};"
            f" at least {INT8_MIN_TOP_WEIGHT_AGREEMENT} required)"
        )
    accuracy = {data.name: accuracy8} if data and accuracy8 else {}
    entry["shipped"] = reason is None
    entry["reason"] = reason
    report["int8"] = entry
    if reason is not None:
        log.warning("int8 variant not shipped: %s", reason)
        int8.unlink()
        rejected["int8"] = RejectedVariantSpec(precision="int8", reason=reason, accuracy=accuracy, speed=speed)
        return "fp32"
    variants["int8"] = VariantSpec(file=int8.name, precision="int8", accuracy=accuracy, speed=speed)
    return "int8" if speed["ms_per_image_b1"] < variants["fp32"].speed["ms_per_image_b1"] else "fp32"


def _tensorrt_variant(fp32: Path, work: Path, input_size: int, variants: dict[str, VariantSpec]) -> dict[str, Any]:
    availability = detect_tensorrt()
    if not availability.available:
        log.warning("TensorRT engine skipped: %s", availability.reason)
        return {"built": False, "skipped_because": availability.reason}
    plan = build_engine(fp32, work / "model.plan", INPUT_NAME, (3, input_size, input_size))
    variants["tensorrt"] = VariantSpec(file=plan.name, precision="fp16", runtime="tensorrt")
    return {"built": True, "detail": availability.reason}


def _replace_folder(new: Path, target: Path) -> None:
    """Swap ``new`` into ``target``; the old bundle is removed only after the new one is in place."""
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
