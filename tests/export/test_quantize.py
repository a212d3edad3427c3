"""int8 quantization computes the same sums on every x86 host (no uint8 × int8 saturation without VNNI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.onnx_export import INPUT_NAME
from export.quantize import quantize_int8


def test_int8_conv_with_full_range_weights_and_inputs_does_not_saturate(tmp_path: Path) -> None:
    # One 1×1 convolution over 64 channels whose per-channel weights and inputs both sit at the top of their
    # quantized ranges: with 8-bit weights, AVX2's vpmaddubsw adds two 255 × 127 products into an int16 and
    # saturates, and ONNX Runtime returned about half the true sum (32.6 instead of 64) on an AVX2-only CPU.
    channels = 64
    weights = np.ones((3, channels, 1, 1), np.float32)
    weights[1] = -1.0
    weights[2, ::2] = -1.0
    graph = helper.make_graph(
        [helper.make_node("Conv", [INPUT_NAME, "w"], ["y"], name="conv")],
        "full_range_conv",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, channels, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "fp32.onnx")
    calibration = np.random.default_rng(0).uniform(0.0, 1.0, (4, channels, 8, 8)).astype(np.float32)
    calibration[0] = 1.0
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", calibration, fp32_outputs=[])
    session = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    sums = session.run(None, {INPUT_NAME: np.ones((1, channels, 8, 8), np.float32)})[0][0, :, 0, 0]
    np.testing.assert_allclose(sums, [channels, -channels, 0.0], atol=0.02 * channels)
