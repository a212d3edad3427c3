"""Every registered model exports to ONNX (legacy exporter, opset 17, dynamic batch) and ONNX Runtime agrees.

The list comes from ``list_models()``, so models added later are covered without editing this file. Models that
accept smaller inputs are exported at one to keep the test fast on CPU; a model that cannot export belongs in
``CANNOT_EXPORT`` with the reason (and in the README's model table).
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor, nn

from models import build_model, list_models
from models.outputs import ModelOutput

torch.set_num_threads(1)

# Smaller-than-nominal builds for models that accept them (picanet_vgg16 also needs a GAP grid that fits its 14×14
# map); the others export at their nominal ``input_size`` (picanet_lite's GAP grid needs its 224×224 input).
SMALL_BUILD: dict[str, dict[str, int]] = {
    "picanet_vgg16": {"input_size": 112, "global_grid": 4},
    **{
        name: {"input_size": 64}
        for name in (
            "class_resnet50",
            "class_lite",
            "arn_vgg16",
            "arn_lite",
            "cosal_vgg16",
            "cosal_lite",
            *(
                f"attnbaseline_{kind}_{net}"
                for kind in ("softmax", "sigmoid", "activation")
                for net in ("vgg16", "lite")
            ),
        )
    },
}
# Export (and onnx.checker) only: picanet_vgg16 has 58M parameters and its ORT session + run add ~15 s; its
# modules are the ones picanet_lite/picanet_lite_lap run through ORT here.
EXPORT_ONLY = {"picanet_vgg16"}
CANNOT_EXPORT: dict[str, str] = {}


class Flatten(nn.Module):
    """``ModelOutput`` → a flat tuple: side outputs, attention maps (sorted), embedding, extras (sorted)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return flatten(self.model(x))


def flatten(out: ModelOutput) -> tuple[Tensor, ...]:
    tensors = [*out.saliency, *(out.attention[k] for k in sorted(out.attention))]
    if out.embedding is not None:
        tensors.append(out.embedding)
    return (*tensors, *(out.extras[k] for k in sorted(out.extras)))


def _param(name: str) -> object:
    if name in CANNOT_EXPORT:
        return pytest.param(name, marks=pytest.mark.xfail(reason=CANNOT_EXPORT[name], strict=True))
    if name in EXPORT_ONLY:
        return pytest.param(name, marks=pytest.mark.slow)
    return name


@pytest.mark.parametrize("name", [_param(n) for n in list_models()])
def test_model_exports_and_onnxruntime_matches_torch(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL_BUILD.get(name, {})).eval()
    size = model.input_size
    wrapper = Flatten(model).eval()
    example = torch.randn(1, 3, size, size)
    with torch.no_grad():
        n_outputs = len(wrapper(example))
    output_names = [f"out{i}" for i in range(n_outputs)]
    buffer = io.BytesIO()
    torch.onnx.export(
        wrapper,
        (example,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=output_names,
        dynamic_axes={k: {0: "batch"} for k in ["image", *output_names]},
    )
    graph = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(graph)
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    if name in EXPORT_ONLY:
        return
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    batch = torch.randn(2, 3, size, size)  # a batch size other than the traced one exercises the dynamic axis
    with torch.no_grad():
        expected = wrapper(batch)
    got = session.run(None, {"image": batch.numpy()})
    assert len(got) == len(expected)
    for name_out, ours, theirs in zip(output_names, got, expected, strict=True):
        assert ours.shape == tuple(theirs.shape), name_out
        # Randomly initialised deep nets in eval mode (BatchNorm with unit running statistics) reach large
        # activations; float32 reassociation differences grow with them, so the tolerance scales with the output.
        scale = max(1.0, float(theirs.abs().max()))
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-3, atol=1e-4 * scale, err_msg=f"{name}: {name_out}")
