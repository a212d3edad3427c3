"""Score saliency maps against ground-truth masks with the standard SOD metrics; prints one JSON object.

python -m training.evaluate --images DIR --masks DIR [--split FILE]
    (--bundle NAME_OR_DIR [--variant fp32|int8] | --checkpoint PATH | --predictions DIR
     | --baseline centre_prior|spectral_residual) [--fixations CSV [--attention KEY]]

Every source's probability map is resized bilinearly to the mask's size and quantized to uint8 (what a saved PNG
holds) before scoring, so all sources are scored alike. ``--bundle`` runs the exported ONNX graph with ONNX Runtime,
reading ``manifest.json`` as plain JSON (training/ must not import service/ or export/); a bare name resolves to
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
from training.baselines import BASELINES, baseline_map
from training.data import DatasetError, Sample, index_by_stem, list_pairs, load_mask, load_rgb, read_fixations
from training.fixation_metrics import FixationMetrics
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


@dataclass
class CheckpointPredictor:
    """Runs a ``training.train`` checkpoint (model_name, model_kwargs, config with preprocess) in PyTorch.

    Args:
        path: ``best.pt`` or ``last.pt`` written by the trainer.
        attention: key of a single-channel spatial attention map (e.g. ``spatial/d1`` of the attention baselines);
            when given, each call also leaves that map, resized to the image and scaled to max 1, in
            ``last_attention``, and the fixation metrics score it instead of the saliency map (how the
            human-vs-machine attention study compares a network's attention with human gaze).
    """

    path: Path
    attention: str | None = None

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
        if self.attention:
            self.description["fixations_scored"] = f"attention {self.attention}"
        self.last_attention: np.ndarray | None = None

    @torch.no_grad()
    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        output = self.model(preprocess_image(image, self.pre)[None])
        if self.attention:
            self.last_attention = self._gaze_map(output.attention, shape)
        return resize_probability(torch.sigmoid(output.final)[0, 0].numpy(), shape)

    def _gaze_map(self, attention: dict[str, torch.Tensor], shape: tuple[int, int]) -> np.ndarray:
        if self.attention not in attention:
            available = ", ".join(sorted(attention)) or "none"
            raise EvaluationError(f"{self.description['model']} has no attention map {self.attention!r} ({available})")
        weights = attention[self.attention]
        if weights.dim() != 4 or weights.shape[1] != 1:
            raise EvaluationError(
                f"attention {self.attention!r} has shape {tuple(weights.shape)}: only single-channel spatial maps "
                "[1,1,h,w] can be compared with fixations (per-pixel attention holds one map per pixel)"
            )
        resized = F.interpolate(weights.float(), size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        resized = np.clip(resized, 0.0, None)
        return resized / max(float(resized.max()), np.finfo(np.float32).tiny)


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
    """

    bundle: str
    variant: str | None = None
    threads: int = 2

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
        except KeyError as exc:
            raise EvaluationError(f"{folder / MANIFEST_FILE} lacks field {exc}") from exc
        if not saliency:
            raise EvaluationError(f"{folder / MANIFEST_FILE} declares no output of kind 'saliency'")
        self.output_name = saliency[0]
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self.description = {"kind": "bundle", "path": str(folder), "variant": variant, "name": manifest.get("name")}

    def __call__(self, sample: Sample, image: Image.Image, shape: tuple[int, int]) -> np.ndarray:
        batch = preprocess_image(image, self.pre)[None].numpy()
        (prob,) = self.session.run([self.output_name], {self.input_name: batch})
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
) -> Predictor:
    """The predictor for exactly one source; ``attention`` (checkpoints only) see :class:`CheckpointPredictor`."""
    given = [k for k, v in {"bundle": bundle, "checkpoint": checkpoint, "predictions": predictions}.items() if v]
    given += ["baseline"] if baseline else []
    if len(given) != 1:
        raise EvaluationError(f"give exactly one of --bundle, --checkpoint, --predictions, --baseline (got {given})")
    if variant and not bundle:
        raise EvaluationError("--variant applies to --bundle only")
    if attention and not checkpoint:
        raise EvaluationError("--attention applies to --checkpoint only")
    if bundle:
        return BundlePredictor(bundle, variant, threads)
    if checkpoint:
        return CheckpointPredictor(Path(checkpoint), attention)
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


def evaluate(
    predictor: Predictor, samples: Sequence[Sample], fixations_csv: Path | None = None, progress: bool = True
) -> tuple[dict[str, Any], SaliencyMetrics]:
    """Score ``predictor`` on ``samples``.

    Args:
        predictor: from :func:`make_predictor`.
        samples: image/mask pairs.
        fixations_csv: optional eye fixations (``stem,x,y``); adds the fixation metrics of the saliency maps, or
            of the attention maps of a :class:`CheckpointPredictor` built with ``attention``.
        progress: show a progress bar on stderr.

    Returns:
        The results dict (metrics, plus fixation metrics when asked) and the metrics accumulator (for curves).
    """
    if isinstance(predictor, PredictionsPredictor):
        predictor.check_covers(samples)
    fixations = read_fixations(fixations_csv) if fixations_csv else {}
    relative = _relative_fixations(fixations, samples) if fixations else {}
    metrics, fixation_metrics = SaliencyMetrics(), FixationMetrics()
    for sample in tqdm(samples, desc="evaluate", disable=not progress, file=sys.stderr):
        mask = load_mask(sample.mask)
        image = load_rgb(sample.image)
        pred = predictor(sample, image, mask.shape)
        metrics.update(pred, mask)
        if sample.stem in relative:
            others = [v for stem, v in relative.items() if stem != sample.stem]
            if others:
                points = np.array([[f.x, f.y] for f in fixations[sample.stem]])
                gaze = getattr(predictor, "last_attention", None)
                gaze = pred.astype(np.float64) / 255.0 if gaze is None else gaze
                fixation_metrics.update(gaze, points, np.concatenate(others))
    results: dict[str, Any] = dict(metrics.results())
    if fixations_csv:
        if not relative:
            raise EvaluationError(f"{fixations_csv} has no fixations for the evaluated images")
        results.update(fixation_metrics.results())
    return results, metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of ground-truth masks (binarized at >= 128)")
    parser.add_argument("--split", help="file of stems to evaluate, one per line (default: every image)")
    parser.add_argument("--bundle", help="bundle folder, or a name under <repo>/bundles (e.g. default)")
    parser.add_argument("--variant", help="bundle variant (fp32, int8, ...); default: the manifest's")
    parser.add_argument("--checkpoint", help="a training.train checkpoint (.pt)")
    parser.add_argument("--predictions", help="folder of saliency maps named by image stem")
    parser.add_argument("--baseline", help=f"a non-learned baseline: {', '.join(BASELINES)}")
    parser.add_argument("--fixations", help="eye-fixation csv (stem,x,y): adds sAUC, IG, NSS, CC, KL")
    parser.add_argument(
        "--attention", help="with --checkpoint and --fixations: score this attention map (e.g. spatial/d1) on gaze"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for inference")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    try:
        samples = list_pairs(Path(args.images), Path(args.masks), Path(args.split) if args.split else None)
        predictor = make_predictor(
            bundle=args.bundle,
            variant=args.variant,
            checkpoint=args.checkpoint,
            predictions=args.predictions,
            baseline=args.baseline,
            threads=args.threads,
            attention=args.attention,
        )
        if args.attention and not args.fixations:
            raise EvaluationError("--attention scores an attention map against fixations: give --fixations too")
        started = time.perf_counter()
        results, _ = evaluate(
            predictor, samples, Path(args.fixations) if args.fixations else None, not args.no_progress
        )
    except (DatasetError, EvaluationError) as exc:
        parser.exit(2, f"error: {exc}\n")
    output = {"evaluated": predictor.description, "images": args.images, "masks": args.masks, "split": args.split}
    output.update({k: round(v, 6) if isinstance(v, float) else v for k, v in results.items()})
    output["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(output))


if __name__ == "__main__":
    main()
