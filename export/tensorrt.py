"""TensorRT engine building (GPU machines only) and the detection that decides whether to try."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRTAvailability:
    """Whether a TensorRT engine can be built here, and if not, why (shown to the user verbatim)."""

    available: bool
    reason: str


def cuda_device_count() -> int:
    """CUDA devices torch can see (0 on CPU builds of torch or machines without a GPU)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def detect_tensorrt() -> TensorRTAvailability:
    """Check for a CUDA device first (the common reason on CPU machines), then for the ``tensorrt`` module."""
    devices = cuda_device_count()
    if devices == 0:
        return TensorRTAvailability(False, "no CUDA device (torch.cuda.is_available() is False)")
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        return TensorRTAvailability(False, f"tensorrt is not importable ({exc}); install NVIDIA's tensorrt wheel")
    return TensorRTAvailability(True, f"TensorRT {trt.__version__} with {devices} CUDA device(s)")


def build_engine(
    onnx_path: str | Path,
    plan_path: str | Path,
    input_name: str,
    input_shape: tuple[int, int, int],
    max_batch: int = 8,
    fp16: bool = True,
) -> Path:
    """Build a serialized TensorRT engine with a batch profile 1…``max_batch`` (optimal at ``max_batch``).

    The engine is specific to the GPU model and TensorRT version it was built with.

    Raises:
        RuntimeError: the ONNX parser or the builder failed (parser errors are included).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    explicit_batch = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if trt.__version__ < "10" else 0
    network = builder.create_network(explicit_batch)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16 and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, (1, *input_shape), (max_batch, *input_shape), (max_batch, *input_shape))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} (see the TensorRT log above)")
    plan_path = Path(plan_path)
    plan_path.write_bytes(bytes(serialized))
    log.info("TensorRT engine written to %s", plan_path)
    return plan_path
