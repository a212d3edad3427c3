"""The bundle manifest: the contract between ``export/`` (writes it) and the service (reads and verifies it).

A bundle is a folder holding ``manifest.json``, ``model.onnx`` and optional variants. The service refuses a
bundle whose files do not match the sha256 recorded here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MANIFEST_FILE = "manifest.json"
SCHEMA_VERSION = 1


class BundleError(RuntimeError):
    """A bundle is missing, malformed or tampered with; the message says which file and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Strict):
    """How an RGB image becomes the network input (same numbers as training's ``Preprocess``)."""

    input_size: int = Field(gt=0)
    resize: Literal["stretch"] = "stretch"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class AttentionSpec(_Strict):
    """Where one attention output's weights sit on the feature map (mirrors ``models.AttentionGeometry``).

    ``global``: pixel (h, w) has ``grid²`` weights over the cells ``(offset + i*dilation, offset + j*dilation)``
    of the feature map, the same cells for every pixel. ``local``: the cells
    ``(h + (i - grid//2)*dilation, w + (j - grid//2)*dilation)`` around the pixel. Feature pixel ``(y, x)``
    covers input pixels ``[y*stride, (y+1)*stride)``. Weights are row-major over (i, j).
    """

    kind: Literal["global", "local", "spatial"]
    grid: int = Field(ge=1)
    dilation: int = Field(ge=1)
    stride: int = Field(ge=1)
    offset: int = Field(default=0, ge=0)
    normalization: Literal["softmax", "sigmoid", "none"]


class OutputSpec(_Strict):
    """One named ONNX output. Saliency is a probability map ``[B,1,h,w]`` (the graph ends in sigmoid)."""

    name: str
    kind: Literal["saliency", "attention", "embedding", "boxes", "scores", "appearance"]
    shape: list[int | str]
    attention: AttentionSpec | None = None


class FileSpec(_Strict):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class VariantSpec(_Strict):
    """A runnable model file of the bundle and what was measured on it."""

    file: str
    precision: Literal["fp32", "fp16", "int8"]
    runtime: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    accuracy: dict[str, dict[str, float]] = Field(default_factory=dict)  # dataset -> metric -> value
    speed: dict[str, float] = Field(default_factory=dict)  # e.g. ms_per_image_b1


class RejectedVariantSpec(_Strict):
    """A variant the export built and measured but did not ship (e.g. int8 outside the accuracy bound)."""

    precision: Literal["fp32", "fp16", "int8"]
    reason: str
    accuracy: dict[str, dict[str, float]] = Field(default_factory=dict)
    speed: dict[str, float] = Field(default_factory=dict)


class RegionHeadSpec(_Strict):
    """A co-saliency bundle's regional feature mapping head: RoIAlign geometry on the ``embedding`` output and the
    small ONNX graph that maps pooled regions ``[K, C*P*P]`` to unit vectors ``[K, D]``."""

    file: str
    input_name: str = "pooled"
    output_name: str = "vectors"
    pool_size: int = Field(ge=1)
    sampling_ratio: int = Field(ge=1)
    stride: int = Field(ge=1)


class CropEncoderSpec(_Strict):
    """A co-saliency bundle's instance encoder: its frozen pretrained encoder as a graph of its own, run on each
    instance's box cut out of the image, resized to ``crop_size`` square and normalized as the network input
    (``[K, 3, S, S]``), giving its ``stride``-pixel features ``[K, C, S/stride, S/stride]``, which the service averages
    under the map."""

    file: str
    input_name: str = "crops"
    output_name: str = "features"
    crop_size: int = Field(ge=16)
    stride: int = Field(ge=1)


class QualityHeadSpec(_Strict):
    """A co-saliency bundle's instance quality head: a small ONNX graph that scores candidate boxes by their predicted
    IoU with the object they frame, from ``service.grouping.quality_inputs`` ``[K, C + 2, s, s]`` (the crop encoder's
    features and two map channels) to ``[K]`` scores in [0, 1]."""

    file: str
    input_name: str = "inputs"
    output_name: str = "quality"
    source: str = ""  # the head's checkpoint and the scenes it was trained on


class GroupingSpec(_Strict):
    """How the service cuts instances and clusters them (``service/grouping.py``); chosen on validation scenes."""

    # "scored": candidates (RPN boxes and components) scored by the bundle's instance quality head
    proposals: Literal["rpn", "components", "both", "scored"]
    min_score: float = Field(ge=0, le=1)  # RPN score (below), or with "scored" predicted quality, an instance needs
    # an RPN box's score: its objectness probability, or that times how well the box frames the map around it
    # (service.grouping.box_fit): the objectness alone ranks many true boxes low ("objectness" in older bundles)
    rpn_score: Literal["objectness", "objectness_fit"] = "objectness"
    # mean co-saliency probability an RPN box needs inside it: a box on plain background is no instance, however
    # alike two such boxes look (0 in bundles exported before this field)
    min_map: float = Field(default=0.0, ge=0, le=1)
    nms_iou: float = Field(gt=0, le=1)
    # what an instance's vector is: the regional feature mapping head on R (the paper's "learned"), the bundle's
    # frozen encoder features averaged under the map inside the box ("appearance"), or the frozen encoder run on the
    # instance's own crop, averaged under the map ("crops": needs the bundle's crop encoder; "learned" in older bundles)
    vectors: Literal["learned", "appearance", "crops"] = "learned"
    max_instances: int = Field(ge=1)
    # with proposals "scored": an instance's vector is the mean of the vectors of the candidates the quality head
    # rates ≥ min_score that overlap its box at IoU ≥ this, weighted by their scores (service.grouping.vote_vectors);
    # None: the box's own vector (bundles exported before this field)
    vote_iou: float | None = Field(default=None, gt=0, le=1)
    distance_threshold: float = Field(gt=0, le=2)  # cosine distance below which clusters merge
    # a group member with more than this share of the map's mass inside its box lying inside better-fitting members'
    # boxes is a duplicate and is dropped (1 keeps every member: bundles exported before this field)
    member_overlap: float = Field(default=1.0, ge=0, le=1)
    # with proposals "both": a connected component holding two or more RPN boxes is replaced by them (touching objects
    # form one component); False in bundles exported before this field
    split_components: bool = False
    mask_threshold: float = Field(gt=0, lt=1)  # probability that counts as foreground (member masks, components)
    min_area_fraction: float = Field(ge=0, lt=1)  # smallest component, as a fraction of the map
    selected_on: str = ""  # the validation scenes and what was measured there

    @model_validator(mode="after")
    def _votes_need_scored_candidates(self) -> GroupingSpec:
        if self.vote_iou is not None and self.proposals != "scored":
            raise ValueError(f"vote_iou needs proposals 'scored' (the candidates that vote), not {self.proposals!r}")
        return self


class SourceSpec(_Strict):
    checkpoint: str
    sha256: str
    epoch: int | None = None
    config: str | None = None


class Manifest(_Strict):
    """Everything the service needs to load, verify and run a bundle, and what it reports about it."""

    schema_version: Literal[1] = SCHEMA_VERSION
    name: str
    version: str
    architecture: str
    paper: str = ""
    description: str = ""
    preprocess: PreprocessSpec
    input_name: str = "image"
    outputs: list[OutputSpec]
    variants: dict[str, VariantSpec]
    default_variant: str = "fp32"
    rejected_variants: dict[str, RejectedVariantSpec] = Field(default_factory=dict)
    files: dict[str, FileSpec]
    opset: int
    source: SourceSpec
    training_data: list[str] = Field(default_factory=list)
    created_at: str
    regions: RegionHeadSpec | None = None  # co-saliency bundles: with ``grouping``, what ``outputs=groups`` needs
    grouping: GroupingSpec | None = None
    crops: CropEncoderSpec | None = None  # co-saliency bundles exported since ``vectors: crops`` exists
    quality: QualityHeadSpec | None = None  # co-saliency bundles exported with ``--quality-head``
    # the graph's saliency output is clamp((p - a) / (1 - a), 0, 1) of the network's probability p
    # (``python -m export --saliency-floor``; 0: plain probabilities, bundles exported before the field)
    saliency_floor: float = Field(default=0.0, ge=0, lt=1)

    def output(self, kind: str) -> list[OutputSpec]:
        return [o for o in self.outputs if o.kind == kind]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(bundle_dir: str | Path, verify: bool = True) -> Manifest:
    """Read ``manifest.json`` of a bundle and (by default) check every file's size and sha256.

    Raises:
        BundleError: the folder, manifest or a listed file is missing, the manifest does not match the
            schema, a variant names a file the manifest does not list, or a hash does not match.
    """
    bundle = Path(bundle_dir)
    path = bundle / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in bundle folder {bundle} (is it a bundle made by `python -m export`?)")
    try:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{path} is not a valid bundle manifest: {exc}") from exc
    for name, variant in manifest.variants.items():
        if variant.file not in manifest.files:
            raise BundleError(f"{path}: variant {name!r} names {variant.file!r}, which the manifest does not list")
    if (manifest.regions is None) != (manifest.grouping is None):
        raise BundleError(f"{path}: a co-saliency bundle needs both 'regions' and 'grouping'")
    if manifest.regions is not None and manifest.regions.file not in manifest.files:
        raise BundleError(f"{path}: regions names {manifest.regions.file!r}, which the manifest does not list")
    if manifest.crops is not None and manifest.crops.file not in manifest.files:
        raise BundleError(f"{path}: crops names {manifest.crops.file!r}, which the manifest does not list")
    if manifest.grouping is not None and manifest.grouping.vectors == "crops" and manifest.crops is None:
        raise BundleError(f"{path}: grouping asks for crop vectors but the bundle has no crop encoder ('crops')")
    if manifest.quality is not None and manifest.quality.file not in manifest.files:
        raise BundleError(f"{path}: quality names {manifest.quality.file!r}, which the manifest does not list")
    scored = manifest.grouping is not None and manifest.grouping.proposals == "scored"
    if scored and (manifest.quality is None or manifest.crops is None):
        raise BundleError(
            f"{path}: grouping asks for scored proposals but the bundle lacks the instance quality head "
            "('quality') or the crop encoder it reads ('crops')"
        )
    if manifest.default_variant not in manifest.variants:
        raise BundleError(
            f"{path}: default variant {manifest.default_variant!r} is not among {sorted(manifest.variants)}"
        )
    if verify:
        verify_files(bundle, manifest)
    return manifest


def verify_files(bundle: Path, manifest: Manifest) -> None:
    """Check the size and sha256 of every file the manifest lists."""
    for rel, spec in manifest.files.items():
        file = bundle / rel
        if not file.is_file():
            raise BundleError(f"bundle {bundle}: file {rel} listed in the manifest is missing")
        size = file.stat().st_size
        if size != spec.bytes:
            raise BundleError(
                f"bundle {bundle}: {rel} is {size} bytes, manifest says {spec.bytes} (tampered or truncated)"
            )
        digest = sha256_file(file)
        if digest != spec.sha256:
            raise BundleError(
                f"bundle {bundle}: sha256 of {rel} is {digest}, manifest says {spec.sha256} (tampered or corrupted);"
                " re-export the bundle"
            )


BUNDLES_DIR = Path(__file__).resolve().parent.parent / "bundles"


def resolve_bundle(name_or_dir: str | Path, bundles_dir: Path = BUNDLES_DIR) -> Path:
    """A bundle folder from a path, or from a name under ``bundles/`` (``default`` is the shipped model)."""
    path = Path(name_or_dir)
    if (path / MANIFEST_FILE).is_file():
        return path
    candidate = bundles_dir / str(name_or_dir)
    if (candidate / MANIFEST_FILE).is_file():
        return candidate
    known = (
        sorted(p.name for p in bundles_dir.glob("*") if (p / MANIFEST_FILE).is_file()) if bundles_dir.is_dir() else []
    )
    raise BundleError(
        f"no bundle {str(name_or_dir)!r}: not a folder with {MANIFEST_FILE}, and not a name under {bundles_dir} "
        f"(known: {', '.join(known) or 'none'})"
    )
