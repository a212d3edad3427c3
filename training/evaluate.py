"""Score saliency maps against ground-truth masks with the standard SOD metrics, and saliency and attention maps
against human eye fixations; prints one JSON object.

python -m training.evaluate --images DIR [--masks DIR] [--split FILE]
    (--bundle NAME_OR_DIR [--variant fp32|int8] | --checkpoint PATH | --predictions DIR
     | --baseline centre_prior|spectral_residual) [--fixations CSV [--attention all|KEY] [--ig-baseline-split FILE]]

Every source's probability map is resized bilinearly to the mask's size (the image's without masks) and quantized to
uint8 (what a saved PNG holds) before scoring, so all sources are scored alike. Without ``--masks`` (eye-tracking
sets have none) only the fixation metrics are computed. ``--attention`` (bundles and checkpoints) adds, per attention
map the model exposes, the fixation metrics of its image-level map (``service.attention.attention_summary``: the
attention each place receives, the local spread, or the spatial map itself) under ``"attention"``. ``--bundle`` runs
the exported ONNX graph with ONNX Runtime, reading ``manifest.json`` as plain JSON; a bare name resolves to
``<repo>/bundles/<name>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from models import build_model
from models.outputs import ModelOutput
from service.attention import attention_summary
from service.manifest import AttentionSpec
from training.baselines import BASELINES, baseline_map
from training.data import (
    DatasetError,
    Sample,
    index_by_stem,
    list_pairs,
    load_mask,
    load_rgb,
    read_fixations,
    read_split,
)
from training.fixation_metrics import CentreBias, FixationMetrics, fixation_density
from training.metrics import SaliencyMetrics, to_uint8
from training.transforms import Preprocess, preprocess_image

log = logging.getLogger("training.evaluate")

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES_DIR = REPO_ROOT / "bundles"
MANIFEST_FILE = "manifest.json"


class Predictor(Protocol):
    """Maps (sample, RGB image, mask shape ``(H, W)``) to a uint8 saliency map of that shape."""

    description: dict[str, Any]

    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray: ...


class EvaluationError(RuntimeError):
    """A source to evaluate is missing, malformed, or does not cover the images."""


def resize_probability(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A ``[h,w]`` probability map → uint8 at ``shape`` (bilinear, half-pixel centres as PyTorch/ORT do)."""
    tensor = torch.from_numpy(np.ascontiguousarray(prob, dtype=np.float32))[None, None]
    if tuple(tensor.shape[-2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return to_uint8(np.clip(tensor[0, 0].numpy(), 0.0, 1.0))


def gaze_map(weights: np.ndarray, spec: AttentionSpec, shape: tuple[int, int]) -> np.ndarray:
    """One image's attention output as an image-level map at ``shape`` (``(H, W)``), scaled to max 1."""
    summary = attention_summary(weights, spec)
    resized = F.interpolate(torch.from_numpy(summary)[None, None], size=shape, mode="bilinear", align_corners=False)
    values = np.clip(resized[0, 0].numpy().astype(np.float64), 0.0, None)
    return values / max(float(values.max()), np.finfo(np.float32).tiny)


def chosen_attention(available: dict[str, AttentionSpec], attention: str, model: str) -> dict[str, AttentionSpec]:
    """The attention maps ``--attention`` names: ``all``, or one key (a model key like ``global`` or an ONNX output
    name like ``attn_global``)."""
    if attention == "all":
        if not available:
            raise EvaluationError(f"{model} exposes no attention map")
        return available
    if attention not in available:
        raise EvaluationError(f"{model} has no attention map {attention!r} ({', '.join(available) or 'none'})")
    return {attention: available[attention]}


@dataclass
class CheckpointPredictor:
    """Runs a ``training.train`` checkpoint (model_name, model_kwargs, config with preprocess) in PyTorch.

    Args:
        path: ``best.pt`` or ``last.pt`` written by the trainer.
        attention: ``all`` or one key of ``model.attention_geometry()`` (e.g. ``spatial/d1``); when given, each call
            also leaves those maps' image-level summaries at the image's size in ``last_attention``.
    """

    path: Path
    attention: str | None = None
    fixations_csv: Path | None = None

    def __post_init__(self) -> None:
        if not Path(self.path).is_file():
            raise EvaluationError(f"checkpoint not found: {self.path}")
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        missing = {"model", "model_name", "model_kwargs", "config"} - set(state)
        if missing:
            raise EvaluationError(f"{self.path} is not a training checkpoint (lacks {sorted(missing)})")
        self.model = build_model(state["model_name"], **state["model_kwargs"])
        self.model.load_state_dict(state["model"])
        self.model.eval()
        pre = dict(state["config"].get("preprocess", {}))
        self.pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()})
        self.description = {"kind": "checkpoint", "path": str(self.path), "model": state["model_name"]}
        self.description["epoch"] = state.get("epoch", -1) + 1
        geometry = getattr(self.model, "attention_geometry", lambda: [])()
        available = {
            g.name: AttentionSpec(
                kind=g.kind, grid=g.grid, dilation=g.dilation, stride=g.stride, offset=g.offset,
                normalization=g.normalization,
            )
            for g in geometry
        }  # fmt: skip
        self.specs = chosen_attention(available, self.attention, state["model_name"]) if self.attention else {}
        self.last_attention: dict[str, np.ndarray] = {}
        # Explicit Attention (Human) models read each image's own fixation map (the study's upper bound).
        self.human_fixations: dict[str, list] | None = None
        if getattr(self.model, "mode", None) == "replace":
            if self.fixations_csv is None:
                name = state["model_name"]
                raise EvaluationError(f"{name} (mode=replace) reads each image's fixations: give --fixations")
            self.human_fixations = read_fixations(self.fixations_csv)

    @staticmethod
    def _human_map(fixations: dict[str, list], sample: Sample, shape: tuple[int, int]) -> torch.Tensor:
        """The sample's fixation density ``[1,1,H,W]`` at the image's ``shape``."""
        if sample.stem not in fixations:
            raise EvaluationError(f"no fixations for {sample.stem}: a mode=replace model cannot run without them")
        points = np.array([[f.x, f.y] for f in fixations[sample.stem]])
        return torch.from_numpy(fixation_density(points, shape).astype(np.float32))[None, None]

    def human_map(self, sample: Sample, image_size: tuple[int, int]) -> torch.Tensor | None:
        """The fixation map ``sample`` (``image_size`` = its ``(H, W)``) feeds a model that replaces its attention
        with it, else ``None``."""
        return None if self.human_fixations is None else self._human_map(self.human_fixations, sample, image_size)

    def forward(self, x: torch.Tensor, human: torch.Tensor | None) -> ModelOutput:
        """The model on the preprocessed batch ``x``, given ``human`` (:meth:`human_map`) when it has one."""
        return self.model(x) if human is None else self.model(x, external_attention=human)

    @torch.no_grad()
    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        human = self.human_map(sample, (image.size[1], image.size[0]))
        output = self.forward(preprocess_image(image, self.pre)[None], human)
        self.last_attention = {
            key: gaze_map(output.attention[key][0].float().numpy(), spec, shape) for key, spec in self.specs.items()
        }
        return resize_probability(torch.sigmoid(output.final)[0, 0].numpy(), shape)


def resolve_bundle_dir(name_or_dir: str) -> Path:
    """A bundle folder given as a path, or as a name under ``<repo>/bundles``."""
    for candidate in (Path(name_or_dir), BUNDLES_DIR / name_or_dir):
        if (candidate / MANIFEST_FILE).is_file():
            return candidate
    raise EvaluationError(f"no bundle {name_or_dir!r}: neither a folder with {MANIFEST_FILE} nor under {BUNDLES_DIR}")


@dataclass
class BundlePredictor:
    """Runs an exported bundle's ONNX graph with ONNX Runtime on CPU.

    Args:
        bundle: a bundle folder or a name under ``<repo>/bundles``.
        variant: ``fp32``, ``int8``… (default: the manifest's ``default_variant``).
        threads: intra-op threads of the session.
        attention: ``all`` or one attention output name (e.g. ``attn_global``); when given, each call also leaves
            those outputs' image-level summaries at the image's size in ``last_attention``.
    """

    bundle: str
    variant: str | None = None
    threads: int = 2
    attention: str | None = None

    def __post_init__(self) -> None:
        import onnxruntime as ort  # only this source needs ONNX Runtime (an optional extra for training)

        folder = resolve_bundle_dir(self.bundle)
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        try:
            variant = self.variant or manifest["default_variant"]
            if variant not in manifest["variants"]:
                raise EvaluationError(f"bundle {folder} has no variant {variant!r} ({', '.join(manifest['variants'])})")
            model_file = folder / manifest["variants"][variant]["file"]
            pre = manifest["preprocess"]
            self.pre = Preprocess(pre["input_size"], pre["resize"], tuple(pre["mean"]), tuple(pre["std"]))
            self.input_name = manifest["input_name"]
            saliency = [o["name"] for o in manifest["outputs"] if o["kind"] == "saliency"]
            available = {o["name"]: AttentionSpec(**o["attention"]) for o in manifest["outputs"] if o.get("attention")}
        except KeyError as exc:
            raise EvaluationError(f"{folder / MANIFEST_FILE} lacks field {exc}") from exc
        if not saliency:
            raise EvaluationError(f"{folder / MANIFEST_FILE} declares no output of kind 'saliency'")
        self.output_name = saliency[0]
        self.specs = chosen_attention(available, self.attention, str(folder)) if self.attention else {}
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.description = {"kind": "bundle", "path": str(folder), "variant": variant, "name": manifest.get("name")}
        self.last_attention: dict[str, np.ndarray] = {}

    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        batch = preprocess_image(image, self.pre)[None].numpy()
        names = [self.output_name, *self.specs]
        prob, *attention = self.session.run(names, {self.input_name: batch})
        self.last_attention = {
            key: gaze_map(weights[0], spec, shape)
            for (key, spec), weights in zip(self.specs.items(), attention, strict=True)
        }
        return resize_probability(prob[0, 0], shape)


@dataclass
class PredictionsPredictor:
    """Saliency maps already on disk, matched to images by stem (any image extension), as greyscale."""

    folder: Path

    def __post_init__(self) -> None:
        try:
            self.maps = index_by_stem(Path(self.folder), "predictions")
        except DatasetError as exc:
            raise EvaluationError(str(exc)) from exc
        self.description = {"kind": "predictions", "path": str(self.folder)}

    def check_covers(self, samples: Sequence[Sample]) -> None:
        """Raise naming the stems that have no saliency map."""
        missing = [s.stem for s in samples if s.stem not in self.maps]
        if missing:
            shown = ", ".join(missing[:10]) + (f" … ({len(missing)} in all)" if len(missing) > 10 else "")
            raise EvaluationError(f"no prediction in {self.folder} for: {shown}")

    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        try:
            with Image.open(self.maps[sample.stem]) as img:
                grey = img.convert("L")
        except OSError as exc:
            raise EvaluationError(f"cannot read prediction {self.maps[sample.stem]}: {exc}") from exc
        if grey.size != (shape[1], shape[0]):
            return resize_probability(np.asarray(grey, dtype=np.float32) / 255.0, shape)
        return np.asarray(grey, dtype=np.uint8)


@dataclass
class BaselinePredictor:
    """A non-learned baseline (``centre_prior`` or ``spectral_residual``) computed at the image's size."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in BASELINES:
            raise EvaluationError(f"unknown baseline {self.name!r}; choose from {', '.join(BASELINES)}")
        self.description = {"kind": "baseline", "name": self.name}

    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        return resize_probability(baseline_map(self.name, image), shape)


def make_predictor(
    *,
    bundle: str | None = None,
    variant: str | None = None,
    checkpoint: str | None = None,
    predictions: str | None = None,
    baseline: str | None = None,
    threads: int = 2,
    attention: str | None = None,
    fixations_csv: Path | None = None,
) -> Predictor:
    """The predictor for exactly one source; ``attention`` (bundles and checkpoints): see :class:`BundlePredictor`."""
    given = [k for k, v in {"bundle": bundle, "checkpoint": checkpoint, "predictions": predictions}.items() if v]
    given += ["baseline"] if baseline else []
    if len(given) != 1:
        raise EvaluationError(f"give exactly one of --bundle, --checkpoint, --predictions, --baseline (got {given})")
    if variant and not bundle:
        raise EvaluationError("--variant applies to --bundle only")
    if attention and not (checkpoint or bundle):
        raise EvaluationError("--attention applies to --bundle and --checkpoint only")
    if bundle:
        return BundlePredictor(bundle, variant, threads, attention)
    if checkpoint:
        return CheckpointPredictor(Path(checkpoint), attention, fixations_csv)
    if predictions:
        return PredictionsPredictor(Path(predictions))
    return BaselinePredictor(str(baseline))


def _relative_fixations(fixations: dict, samples: Sequence[Sample]) -> dict[str, np.ndarray]:
    relative = {}
    for sample in samples:
        if sample.stem in fixations:
            with Image.open(sample.image) as img:
                w, h = img.size
            relative[sample.stem] = np.array([[f.x / w, f.y / h] for f in fixations[sample.stem]])
    return relative


def fit_centre_bias(fixations_csv: Path, images_dir: Path, split: Path, evaluated: Sequence[Sample]) -> CentreBias:
    """The information-gain baseline fitted on the fixations of the images a split lists (never evaluated ones).

    Raises:
        EvaluationError: the split overlaps the evaluated images, or none of its images has fixations.
    """
    stems = read_split(split)
    overlap = sorted(set(stems) & {s.stem for s in evaluated})
    if overlap:
        raise EvaluationError(f"--ig-baseline-split {split} lists evaluated images ({', '.join(overlap[:5])}...)")
    images = index_by_stem(images_dir, "images")
    training = [Sample(stem, images[stem], None) for stem in stems if stem in images]
    relative = _relative_fixations(read_fixations(fixations_csv), training)
    if not relative:
        raise EvaluationError(f"{fixations_csv} has no fixations for the images of {split}")
    return CentreBias(np.concatenate(list(relative.values())), len(relative))


def evaluate(
    predictor: Predictor,
    samples: Sequence[Sample],
    fixations_csv: Path | None = None,
    progress: bool = True,
    centre_bias: CentreBias | None = None,
    worst: int = 0,
) -> tuple[dict[str, Any], SaliencyMetrics]:
    """Score ``predictor`` on ``samples``.

    Args:
        predictor: from :func:`make_predictor`.
        samples: images with masks (SOD metrics) or without (fixation metrics only).
        fixations_csv: optional eye fixations (``stem,x,y``); adds the fixation metrics of the saliency maps, and
            under ``"attention"`` those of each attention map a predictor built with ``attention`` exposes.
        progress: show a progress bar on stderr.
        centre_bias: the information-gain baseline (:func:`fit_centre_bias`); default the analytic centre prior.
        worst: with masks, also list this many images with the largest MAE (``worst_by_mae``, largest first) and
            the share of the dataset's MAE they carry (``worst_share_of_mae``): on 100 images a few failures can
            decide the mean.

    Returns:
        The results dict (metrics, plus fixation metrics when asked) and the metrics accumulator (for curves).
    """
    if isinstance(predictor, PredictionsPredictor):
        predictor.check_covers(samples)
    with_masks = all(s.mask is not None for s in samples)
    if not with_masks and not fixations_csv:
        raise EvaluationError("nothing to score: give --masks (SOD metrics), --fixations (gaze metrics), or both")
    fixations = read_fixations(fixations_csv) if fixations_csv else {}
    relative = _relative_fixations(fixations, samples) if fixations else {}
    metrics, fixation_metrics = SaliencyMetrics(), FixationMetrics(baseline=centre_bias)
    attention_metrics: dict[str, FixationMetrics] = {}
    for sample in tqdm(samples, desc="evaluate", disable=not progress, file=sys.stderr):
        image = load_rgb(sample.image)
        mask = load_mask(sample.mask) if sample.mask is not None else None
        pred = predictor(sample, image, mask.shape if mask is not None else (image.height, image.width))
        if mask is not None:
            metrics.update(pred, mask)
        others = [v for stem, v in relative.items() if stem != sample.stem]
        if sample.stem in relative and others:
            points = np.array([[f.x, f.y] for f in fixations[sample.stem]])
            negatives = np.concatenate(others)
            fixation_metrics.update(pred.astype(np.float64) / 255.0, points, negatives)
            for key, gaze in getattr(predictor, "last_attention", {}).items():
                attention_metrics.setdefault(key, FixationMetrics(baseline=centre_bias)).update(gaze, points, negatives)
    results: dict[str, Any] = dict(metrics.results()) if with_masks else {"n_images": len(samples)}
    if with_masks and worst > 0:
        stems = [sample.stem for sample in samples]
        errors = sorted(zip(stems, metrics.per_image("mae"), strict=True), key=lambda item: -item[1])
        results["worst_by_mae"] = [{"stem": stem, "mae": round(mae, 4)} for stem, mae in errors[:worst]]
        total = sum(mae for _, mae in errors)
        results["worst_share_of_mae"] = round(sum(mae for _, mae in errors[:worst]) / total, 4) if total else 0.0
    if fixations_csv:
        if not relative:
            raise EvaluationError(f"{fixations_csv} has no fixations for the evaluated images")
        results.update(fixation_metrics.results())
        if attention_metrics:
            results["attention"] = {key: m.results() for key, m in attention_metrics.items()}
    return results, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument(
        "--masks", help="folder of ground-truth masks (binarized at >= 128); without it, only the gaze metrics"
    )
    parser.add_argument("--split", help="file of stems to evaluate, one per line (default: every image)")
    parser.add_argument("--bundle", help="bundle folder, or a name under <repo>/bundles (e.g. default)")
    parser.add_argument("--variant", help="bundle variant (fp32, int8, ...); default: the manifest's")
    parser.add_argument("--checkpoint", help="a training.train checkpoint (.pt)")
    parser.add_argument("--predictions", help="folder of saliency maps named by image stem")
    parser.add_argument("--baseline", help=f"a non-learned baseline: {', '.join(BASELINES)}")
    parser.add_argument("--fixations", help="eye-fixation csv (stem,x,y): adds sAUC, IG, NSS, CC, KL")
    parser.add_argument(
        "--attention",
        help="with --bundle or --checkpoint and --fixations: score every attention map (all) or one (its key) on gaze",
    )
    parser.add_argument(
        "--ig-baseline-split",
        help="stems (e.g. a train split) whose fixations fit the information-gain baseline (default: analytic prior)",
    )
    parser.add_argument(
        "--worst", type=int, default=0, help="with --masks: list the N images of largest MAE and their share of it"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        if args.worst < 0:
            raise EvaluationError(f"--worst must be >= 0, got {args.worst}")
        masks = Path(args.masks) if args.masks else None
        samples = list_pairs(Path(args.images), masks, Path(args.split) if args.split else None)
        predictor = make_predictor(
            bundle=args.bundle,
            variant=args.variant,
            checkpoint=args.checkpoint,
            predictions=args.predictions,
            baseline=args.baseline,
            threads=args.threads,
            attention=args.attention,
            fixations_csv=Path(args.fixations) if args.fixations else None,
        )
        if args.attention and not args.fixations:
            raise EvaluationError("--attention scores an attention map against fixations: give --fixations too")
        if args.ig_baseline_split and not args.fixations:
            raise EvaluationError("--ig-baseline-split fits a gaze baseline: give --fixations too")
        fixations = Path(args.fixations) if args.fixations else None
        bias = (
            fit_centre_bias(fixations, Path(args.images), Path(args.ig_baseline_split), samples)
            if fixations and args.ig_baseline_split
            else None
        )
        started = time.perf_counter()
        results, _ = evaluate(predictor, samples, fixations, not args.no_progress, bias, args.worst)
    except (DatasetError, EvaluationError) as exc:
        parser.exit(2, f"error: {exc}\n")
    output = {"evaluated": predictor.description, "images": args.images, "masks": args.masks, "split": args.split}
    output.update({k: round(v, 6) if isinstance(v, float) else v for k, v in results.items()})
    output["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(output))


if __name__ == "__main__":
    main()
