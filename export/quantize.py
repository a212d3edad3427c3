"""Static int8 QDQ quantization calibrated on real images (ONNX Runtime's quantization tool).

Calibration images go through the bundle's own preprocessing: calibrating on random noise instead put the
int8 model 0.48 away from fp32 (MEASURED.md), so there is deliberately no synthetic fallback.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from export.onnx_export import INPUT_NAME

log = logging.getLogger(__name__)

# Only the convolutions (and the GAP pooling MatMul) carry the arithmetic; quantizing the ~300 Slice/Pad/Reshape
# nodes of the shifted-window attention only adds Q/DQ pairs. LSTM, Softmax and Sigmoid stay fp32 because they
# are not in this list, so attention weights keep their float normalization.
QUANTIZED_OPS = ("Conv", "MatMul")


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed calibration images to the calibrator one at a time.

    Args:
        images: ``[N,3,S,S]`` float32 array, preprocessed like the service's input.
    """

    def __init__(self, images: np.ndarray) -> None:
        if len(images) == 0:
            raise ValueError("int8 calibration needs at least one image")
        self._images = images
        self._iter: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for image in self._images:
            yield {INPUT_NAME: image[None]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()


# Percentile calibration clips each activation's range to its 0.1–99.9 % quantiles instead of its extremes: with
# min-max, a few outlier activations stretched the uint8 scale. Measured on the stage-1 default model (ECSSD_val,
# 50 calibration images from ECSSD_train): max F −0.006 (min-max), −0.006 (entropy), −0.004 (99.99 %), −0.0015
# (99.9 % with the saliency output's conv in fp32; −0.0015 with 100 images too) against fp32. On the stage-2 model
# the same recipe lost 0.006, so its int8 was rejected. On picanet_effl0 (EfficientNet-Lite0 encoder, epoch-3 weights,
# 100 DUTS-TR calibration images) it lost 0.0060 max F as well; keeping the stem convolution (the one that reads the
# image) in fp32 too brought the loss to 0.0008 (MAE +0.0027), while keeping the last three decoder convolutions in
# fp32 changed nothing: the export keeps the first layer in fp32. It holds every calibration activation in memory
# while it builds the histograms (6.7 GB peak for 100 images at 224 px).
CALIBRATION_PERCENTILE = 99.9

# 7-bit weights. x86 CPUs without VNNI (AVX2, plain AVX-512) multiply uint8 activations by int8 weights with
# vpmaddubsw, whose int16 sum of two products saturates at full 8-bit range, so the same int8 file scored
# differently by host: the stage-2 default with 8-bit weights, ECSSD_val max F / MAE 0.9309 / 0.0445 where it was
# exported (with VNNI) and 0.9269 / 0.0474 on an AMD EPYC with AVX2 only (fp32: 0.9295 / 0.0435). With 7-bit
# weights no sum can saturate, so every x86 host computes the same thing.
REDUCE_RANGE = True


# Ops that only move values: the attention weights pass through them unchanged on their way to an output.
SHAPE_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


def output_logit_nodes(model: onnx.ModelProto, outputs: list[str]) -> list[str]:
    """Nodes that produce each named output directly or through one Softmax/Sigmoid (its logits conv).

    Quantizing the logits of a softmax shifts every weight of the pixel's distribution, and the saliency logits are
    what the user sees, so those convolutions stay fp32 (cheap: one 1×1 conv per output). Self-attention logits
    are a MatMul of two 1×1 projections; its sharp softmax moved its peak to another position for a third of the
    pixels when the projections were int8, so they stay fp32 as well.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    excluded = []
    for name in outputs:
        node = producer.get(name)
        while node is not None and node.op_type not in ("Conv", "MatMul"):
            node = producer.get(node.input[0])
        if node is None:
            continue
        excluded.append(node.name)
        if node.op_type == "MatMul":  # self-attention logits f(x)ᵀg(x): its query/key projections too
            for tensor in node.input:
                source = producer.get(tensor)
                while source is not None and source.op_type in SHAPE_OPS:
                    source = producer.get(source.input[0])
                if source is not None and source.op_type == "Conv":
                    excluded.append(source.name)
    return excluded


def attention_consumer_nodes(model: onnx.ModelProto, outputs: list[str]) -> list[str]:
    """Convolutions and MatMuls that read an output's softmax/sigmoid weights (directly or through shape-only ops).

    Quantizing such a node puts a Q/DQ pair on the weights, and the graph output then reads the quantized copy: a
    softmax over hundreds of positions, calibrated to a percentile of its mostly tiny values, clips its few large
    weights (ARN's self-attention lost up to 0.99 of a weight that way), so these nodes stay fp32.
    """
    producer = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    excluded: list[str] = []
    for name in outputs:
        node = producer.get(name)
        while node is not None and node.op_type in SHAPE_OPS:
            node = producer.get(node.input[0])
        if node is None or node.op_type not in ("Softmax", "Sigmoid"):
            continue
        pending, seen = list(node.output), set()
        while pending:
            tensor = pending.pop()
            for consumer in consumers.get(tensor, []):
                if consumer.name in seen:
                    continue
                seen.add(consumer.name)
                if consumer.op_type in SHAPE_OPS:
                    pending.extend(consumer.output)
                elif consumer.op_type in QUANTIZED_OPS and consumer.name not in excluded:
                    excluded.append(consumer.name)
    return excluded


def input_conv_nodes(model: onnx.ModelProto) -> list[str]:
    """The first convolutions downstream of the network input (through padding, casts and the like)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    frontier = [i.name for i in model.graph.input]
    found: list[str] = []
    seen: set[str] = set()
    while frontier:
        for node in consumers.get(frontier.pop(0), []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type == "Conv":
                found.append(node.name)
            else:
                frontier.extend(node.output)
    return found


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration_images: np.ndarray,
    fp32_outputs: list[str],
    first_layer_fp32: bool = False,
) -> Path:
    """Write a static QDQ int8 model: per-channel int8 weights, uint8 activations, percentile calibration.

    Args:
        fp32_path: the exported fp32 model.
        out_path: where to write the int8 model.
        calibration_images: real images, preprocessed (see :class:`ImageCalibrationReader`).
        fp32_outputs: names of the outputs (saliency, attention) whose logits convolutions, and the nodes that read
            their attention weights, stay fp32.
        first_layer_fp32: keep the convolution that reads the input image in fp32 too.

    Returns:
        ``out_path``.
    """
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + ORT's basic graph cleanup before quantization, as the ORT docs recommend.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        model = onnx.load(str(prepared))
        excluded = output_logit_nodes(model, fp32_outputs) + attention_consumer_nodes(model, fp32_outputs)
        if first_layer_fp32:
            excluded += input_conv_nodes(model)
        log.info("int8: quantizing %s, keeping %d nodes in fp32: %s", QUANTIZED_OPS, len(excluded), excluded)
        # ORT's histogram calibrators print progress on stdout, where `python -m export` writes its JSON report.
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared),
                str(out_path),
                ImageCalibrationReader(calibration_images),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                reduce_range=REDUCE_RANGE,
                nodes_to_exclude=excluded,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": CALIBRATION_PERCENTILE},
            )
    onnx.checker.check_model(str(out_path))
    return out_path
