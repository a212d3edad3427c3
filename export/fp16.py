"""FP16 variant for GPUs: weights and activations in half precision, inputs and outputs kept fp32."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnx import helper
from onnxconverter_common import float16


def _isolate_graph_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that other nodes also read its own Identity node.

    With ``keep_io_types`` the converter casts a graph output back to fp32 in place, so a node that also
    consumed that tensor (GAP's MatMul reads the attention weights it outputs) would get fp32 next to fp16
    inputs and the model would not load.
    """
    outputs = {o.name for o in model.graph.output}
    consumed = {name for node in model.graph.node for name in node.input} & outputs
    for name in consumed:
        internal = f"{name}__internal"
        for node in model.graph.node:
            node.output[:] = [internal if o == name else o for o in node.output]
            node.input[:] = [internal if i == name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [internal], [name], name=f"{name}__output"))


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """Write an fp16 copy of an fp32 model whose input and outputs stay fp32 (the service feeds float32).

    Returns:
        ``out_path``.
    """
    model = onnx.load(str(fp32_path))
    del model.graph.value_info[:]  # stale fp32 annotations would contradict the converted tensors
    _isolate_graph_outputs(model)
    with warnings.catch_warnings():
        # Weights below fp16's range are flushed to its smallest value; the parity check bounds the effect.
        warnings.simplefilter("ignore", UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))
    onnx.checker.check_model(str(out_path))
    return Path(out_path)
