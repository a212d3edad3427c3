"""A Triton Inference Server model repository for a bundle: ``<repo>/<name>/config.pbtxt`` + ``1/model.onnx``."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import onnx

from service.manifest import Manifest

# ONNX TensorProto element type → Triton DataType enum name (model_config.proto).
_TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32",
    onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.INT64: "TYPE_INT64",
    onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.UINT8: "TYPE_UINT8",
    onnx.TensorProto.BOOL: "TYPE_BOOL",
}


@dataclass(frozen=True)
class TritonSettings:
    """Scheduling settings written into ``config.pbtxt``.

    Args:
        max_batch_size: largest batch Triton forms (the ONNX batch axis is dynamic).
        preferred_batch_sizes: batch sizes the dynamic batcher aims for.
        max_queue_delay_us: how long a request may wait for others to join its batch.
        instance_kind: ``KIND_CPU`` or ``KIND_GPU``.
        instance_count: model instances per device.
    """

    max_batch_size: int = 8
    preferred_batch_sizes: tuple[int, ...] = (4, 8)
    max_queue_delay_us: int = 2000
    instance_kind: str = "KIND_CPU"
    instance_count: int = 1


def _tensor(name: str, data_type: str, dims: list[int]) -> str:
    return f'  {{\n    name: "{name}"\n    data_type: {data_type}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def render_config(model_name: str, model: onnx.ModelProto, settings: TritonSettings) -> str:
    """``config.pbtxt`` text for an ONNX model with a leading dynamic batch axis (dims exclude it)."""
    if any(b > settings.max_batch_size for b in settings.preferred_batch_sizes):
        raise ValueError("preferred batch sizes must not exceed max_batch_size")

    def entries(values: list[onnx.ValueInfoProto]) -> str:
        rendered = []
        for value in values:
            tensor = value.type.tensor_type
            dims = [d.dim_value for d in tensor.shape.dim][1:]
            if any(d <= 0 for d in dims):
                raise ValueError(f"{value.name}: Triton needs static non-batch dims, got {tensor.shape}")
            rendered.append(_tensor(value.name, _TRITON_TYPES[tensor.elem_type], dims))
        return ",\n".join(rendered)

    initializers = {i.name for i in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in initializers]
    preferred = ", ".join(map(str, settings.preferred_batch_sizes))
    return (
        f'name: "{model_name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {settings.max_batch_size}\n"
        f"input [\n{entries(inputs)}\n]\n"
        f"output [\n{entries(list(model.graph.output))}\n]\n"
        "dynamic_batching {\n"
        f"  preferred_batch_size: [ {preferred} ]\n"
        f"  max_queue_delay_microseconds: {settings.max_queue_delay_us}\n"
        "}\n"
        "instance_group [\n"
        f"  {{\n    count: {settings.instance_count}\n    kind: {settings.instance_kind}\n  }}\n"
        "]\n"
    )


def write_triton_repository(
    bundle_dir: str | Path, manifest: Manifest, repo_dir: str | Path, settings: TritonSettings | None = None
) -> Path:
    """Add the bundle's fp32 ONNX model to a Triton repository as model ``manifest.name``, version 1.

    Returns:
        The model folder ``<repo_dir>/<name>``.
    """
    source = Path(bundle_dir) / manifest.variants["fp32"].file
    model_dir = Path(repo_dir) / manifest.name
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, model_dir / "1" / "model.onnx")
    text = render_config(manifest.name, onnx.load(str(source), load_external_data=False), settings or TritonSettings())
    (model_dir / "config.pbtxt").write_text(text)
    return model_dir
