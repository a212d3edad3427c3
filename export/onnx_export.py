"""PyTorch model → ONNX graph with named outputs: sigmoid saliency, every attention map, the embedding, and for
co-saliency models the RPN's decoded boxes and objectness plus a second graph for the regional feature mapping head."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.cosal import InstanceQualityHead
from service.manifest import AttentionSpec, CropEncoderSpec, OutputSpec, QualityHeadSpec, RegionHeadSpec

log = logging.getLogger(__name__)

OPSET = 17
INPUT_NAME = "image"
SALIENCY_NAME = "saliency"
EMBEDDING_NAME = "embedding"
BOXES_NAME = "rpn_boxes"
SCORES_NAME = "rpn_scores"
APPEARANCE_NAME = "appearance"
REGION_HEAD_FILE = "regions.onnx"
CROP_ENCODER_FILE = "crops.onnx"
QUALITY_HEAD_FILE = "quality.onnx"
# Side of an instance's crop for the crop encoder: ten stride-16 cells across, where a 50-pixel copy in a 320-pixel
# input spans three (EfficientNet-Lite0 on 160-pixel crops costs ~10 ms a crop on one core here)
CROP_SIZE = 160


def attention_output_name(key: str) -> str:
    """ONNX output name of an attention map: ``global`` → ``attn_global``, ``local/d5`` → ``attn_local_d5``."""
    return "attn_" + key.replace("/", "_")


class ExportWrapper(nn.Module):
    """Flattens a model's ``ModelOutput`` into the bundle's ordered outputs.

    The saliency output is ``sigmoid`` of the finest side output (the bundle outputs probabilities), with a
    ``saliency_floor`` ``a > 0`` stretched as ``clamp((p − a) / (1 − a), 0, 1)`` (``training.fit_saliency_floor``:
    faint background haze set to 0, the ranking above ``a`` kept); attention
    maps follow in ``attention_keys`` order, then the embedding when ``with_embedding``, then, for a model with
    ``proposals()`` (co-saliency), the RPN's boxes (fractions of the input side), objectness probabilities and the
    encoder features that describe an instance's appearance (``extras["appearance"]``).

    Args:
        model: a registered model in eval mode.
        attention_keys: keys of ``ModelOutput.attention`` to export.
        with_embedding: also export ``ModelOutput.embedding``.
        saliency_floor: the probability below which the saliency output is 0 (0: plain probabilities).
    """

    def __init__(
        self, model: nn.Module, attention_keys: list[str], with_embedding: bool, saliency_floor: float = 0.0
    ) -> None:
        super().__init__()
        if not 0 <= saliency_floor < 1:
            raise ValueError(f"saliency_floor must lie in [0, 1), got {saliency_floor}")
        self.model = model
        self.attention_keys = list(attention_keys)
        self.with_embedding = with_embedding
        self.saliency_floor = saliency_floor
        self.with_proposals = hasattr(model, "proposals")

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        out = self.model(x)
        saliency = torch.sigmoid(out.final)
        if self.saliency_floor > 0:
            saliency = ((saliency - self.saliency_floor) / (1 - self.saliency_floor)).clamp(0, 1)
        tensors = [saliency, *(out.attention[k] for k in self.attention_keys)]
        if self.with_embedding:
            tensors.append(out.embedding)
        if self.with_proposals:
            boxes, scores = self.model.proposals(out)
            # As fractions of the input side: the parity check's absolute tolerance then means the same for boxes
            # as for probabilities, and a client scales them straight to its image.
            tensors.extend([boxes / x.shape[-1], scores, out.extras["appearance"]])
        return tuple(tensors)


@dataclass(frozen=True)
class ExportedGraph:
    """What :func:`export_onnx` wrote: the file, its outputs (manifest specs) and the wrapper that made it."""

    path: Path
    outputs: list[OutputSpec]
    wrapper: ExportWrapper


def _attention_specs(model: nn.Module) -> dict[str, AttentionSpec]:
    geometry = model.attention_geometry() if hasattr(model, "attention_geometry") else []
    return {
        g.name: AttentionSpec(
            kind=g.kind,
            grid=g.grid,
            dilation=g.dilation,
            stride=g.stride,
            offset=g.offset,
            normalization=g.normalization,
        )
        for g in geometry
    }


def describe_outputs(
    model: nn.Module, input_size: int, saliency_floor: float = 0.0
) -> tuple[ExportWrapper, list[OutputSpec]]:
    """Run the model once to learn its outputs; return the export wrapper (see :class:`ExportWrapper` for
    ``saliency_floor``) and one ``OutputSpec`` per output."""
    with torch.no_grad():
        probe = model(torch.zeros(1, 3, input_size, input_size))
    geometry = _attention_specs(model)
    keys = list(probe.attention)
    without_geometry = [k for k in keys if k not in geometry]
    if without_geometry:
        # The service cannot place such maps on the image; export them anyway, flagged in the log.
        log.warning("attention maps %s have no attention_geometry(); exported without placement info", without_geometry)
    with_embedding = probe.embedding is not None
    wrapper = ExportWrapper(model, keys, with_embedding, saliency_floor).eval()

    def shape(t: Tensor) -> list[int | str]:
        return ["batch", *t.shape[1:]]

    specs = [OutputSpec(name=SALIENCY_NAME, kind="saliency", shape=shape(probe.final))]
    specs += [
        OutputSpec(
            name=attention_output_name(k), kind="attention", shape=shape(probe.attention[k]), attention=geometry.get(k)
        )
        for k in keys
    ]
    if with_embedding:
        specs.append(OutputSpec(name=EMBEDDING_NAME, kind="embedding", shape=shape(probe.embedding)))
    if wrapper.with_proposals:
        boxes, scores = model.proposals(probe)
        specs.append(OutputSpec(name=BOXES_NAME, kind="boxes", shape=shape(boxes)))
        specs.append(OutputSpec(name=SCORES_NAME, kind="scores", shape=shape(scores)))
        specs.append(OutputSpec(name=APPEARANCE_NAME, kind="appearance", shape=shape(probe.extras["appearance"])))
    return wrapper, specs


def export_onnx(
    model: nn.Module, path: str | Path, input_size: int, opset: int = OPSET, saliency_floor: float = 0.0
) -> ExportedGraph:
    """Export with the legacy (TorchScript) exporter, a dynamic batch axis, and check the graph
    (``saliency_floor``: see :class:`ExportWrapper`).

    The legacy exporter is used because it keeps the requested opset and exports in well under a second
    (the dynamo exporter took 7 s here and raised opset 17 to 18, MEASURED.md).

    Raises:
        onnx.checker.ValidationError: the exported graph is invalid.
    """
    path = Path(path)
    wrapper, specs = describe_outputs(model, input_size, saliency_floor)
    names = [s.name for s in specs]
    dynamic = {name: {0: "batch"} for name in [INPUT_NAME, *names]}
    dummy = torch.zeros(2, 3, input_size, input_size)
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    _declare_output_shapes(path, specs)
    onnx.checker.check_model(str(path), full_check=True)
    return ExportedGraph(path=path, outputs=specs, wrapper=wrapper)


def _declare_output_shapes(path: Path, specs: list[OutputSpec]) -> None:
    """Write each output's real shape (``batch`` and the probed sizes) into the graph and drop the exporter's
    intermediate shape annotations.

    The legacy exporter names dynamic sizes it cannot follow through a runtime ``Reshape`` after unrelated ones
    (EfficientNet-Lite's softmax attention maps of three sizes all came out as ``[batch, 1, batch, <saliency
    width>]``); ONNX Runtime trusts such names, planned one buffer for maps of different sizes and failed at run
    time. The input side is fixed at export, so every non-batch size is a constant.
    """
    model = onnx.load(str(path))
    by_name = {spec.name: spec for spec in specs}
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        for dim, size in zip(dims, by_name[output.name].shape, strict=True):
            if isinstance(size, int):
                dim.dim_value = size
            else:
                dim.dim_param = size
    del model.graph.value_info[:]
    onnx.save(model, str(path))


class RegionHeadWrapper(nn.Module):
    """The regional feature mapping head after RoIAlign (eq. 3): pooled regions ``[K, C*P*P]`` → unit vectors."""

    def __init__(self, mlp: nn.Module) -> None:
        super().__init__()
        self.mlp = mlp

    def forward(self, pooled: Tensor) -> Tensor:
        return F.normalize(self.mlp(pooled), dim=1)


def export_region_head(
    model: nn.Module, path: str | Path, opset: int = OPSET
) -> tuple[RegionHeadSpec, RegionHeadWrapper]:
    """Export a co-saliency model's regional feature mapping head (``model.rfm``) as its own graph with a dynamic
    region axis; RoIAlign stays outside it (the service pools in numpy with the geometry returned here)."""
    path = Path(path)
    rfm = model.rfm
    pool = rfm.pool
    wrapper = RegionHeadWrapper(rfm.mlp).eval()
    spec = RegionHeadSpec(
        file=path.name,
        pool_size=pool.output_size,
        sampling_ratio=pool.sampling_ratio,
        stride=round(1 / pool.spatial_scale),
    )
    _export_instance_graph(wrapper, torch.zeros(3, rfm.mlp[0].in_features), path, spec, "regions", opset)
    return spec, wrapper


class CropEncoderWrapper(nn.Module):
    """A co-saliency model's frozen encoder on instance crops: ``[K, 3, S, S]`` → its second-deepest features (the
    level the whole image's ``appearance`` output comes from)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, crops: Tensor) -> Tensor:
        return self.encoder(crops)[-2]


def export_crop_encoder(
    model: nn.Module, path: str | Path, crop_size: int = CROP_SIZE, opset: int = OPSET
) -> tuple[CropEncoderSpec, CropEncoderWrapper]:
    """Export a co-saliency model's frozen encoder as its own graph with a dynamic crop axis, for ``vectors: crops``
    (``service.grouping.crop_vectors`` cuts, resizes and pools in numpy)."""
    path = Path(path)
    wrapper = CropEncoderWrapper(model.encoder).eval()
    spec = CropEncoderSpec(file=path.name, crop_size=crop_size, stride=int(model.encoder.strides[-2]))
    _export_instance_graph(wrapper, torch.zeros(2, 3, crop_size, crop_size), path, spec, "crops", opset)
    return spec, wrapper


class QualityHeadWrapper(nn.Module):
    """The instance quality head with its sigmoid: ``[K, C + 2, s, s]`` → predicted IoU ``[K]`` in [0, 1]."""

    def __init__(self, head: InstanceQualityHead) -> None:
        super().__init__()
        self.head = head

    def forward(self, inputs: Tensor) -> Tensor:
        return torch.sigmoid(self.head(inputs))


def export_quality_head(
    head: InstanceQualityHead, path: str | Path, source: str, opset: int = OPSET
) -> tuple[QualityHeadSpec, QualityHeadWrapper]:
    """Export an instance quality head (``training.train_instance_quality``) as its own graph with a dynamic candidate
    axis, for ``proposals: scored`` (``service.grouping.quality_inputs`` builds its inputs in numpy)."""
    path = Path(path)
    wrapper = QualityHeadWrapper(head).eval()
    spec = QualityHeadSpec(file=path.name, source=source)
    dummy = torch.zeros(2, head.channels + 2, head.size, head.size)
    _export_instance_graph(wrapper, dummy, path, spec, "candidates", opset)
    return spec, wrapper


def _export_instance_graph(
    wrapper: nn.Module,
    dummy: Tensor,
    path: Path,
    spec: RegionHeadSpec | CropEncoderSpec | QualityHeadSpec,
    axis: str,
    opset: int,
) -> None:
    """Export one of a co-saliency bundle's per-instance graphs: one input, one output, the instance axis dynamic."""
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (dummy,),
            str(path),
            input_names=[spec.input_name],
            output_names=[spec.output_name],
            dynamic_axes={spec.input_name: {0: axis}, spec.output_name: {0: axis}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
