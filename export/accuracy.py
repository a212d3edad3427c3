"""Saliency accuracy of an ONNX Runtime session on a labelled split (max F and MAE, training's metrics)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F

from export.images import load_batch
from export.onnx_export import INPUT_NAME, SALIENCY_NAME
from training.data import Sample, list_pairs, load_mask
from training.metrics import SaliencyMetrics, to_uint8
from training.transforms import Preprocess

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@dataclass(frozen=True)
class EvalSplit:
    """A labelled split under a data root, named like ``ECSSD_val`` (dataset ``ECSSD``, split file stem)."""

    name: str
    samples: list[Sample]


def eval_split(root: str | Path, name: str = "ECSSD_val") -> EvalSplit | None:
    """The split ``<root>/<dataset>/{images,masks}`` + ``<root>/splits/<name>.txt``, or None if absent."""
    root = Path(root)
    dataset = name.rsplit("_", 1)[0]
    split = root / "splits" / f"{name}.txt"
    if not split.is_file() or not (root / dataset / "images").is_dir():
        return None
    return EvalSplit(name, list_pairs(root / dataset / "images", root / dataset / "masks", split))


def evaluate_session(
    session: ort.InferenceSession, split: EvalSplit, pre: Preprocess, batch_size: int = 8
) -> dict[str, float]:
    """Max F and MAE of the bundle's saliency output against the split's masks, at mask resolution.

    The probability map is resized bilinearly to the mask size and stored as uint8, as a saved PNG would be.
    Training's validation upsamples logits before the sigmoid instead; the difference is far below the 0.005
    int8 acceptance bound, and fp32 and int8 are scored by this same function.
    """
    metrics = SaliencyMetrics()
    for start in range(0, len(split.samples), batch_size):
        chunk = split.samples[start : start + batch_size]
        (probs,) = session.run([SALIENCY_NAME], {INPUT_NAME: load_batch([s.image for s in chunk], pre)})
        for sample, prob in zip(chunk, probs, strict=True):
            mask = load_mask(sample.mask)
            resized = F.interpolate(torch.from_numpy(prob[None]), size=mask.shape, mode="bilinear", align_corners=False)
            metrics.update(to_uint8(np.clip(resized[0, 0].numpy(), 0.0, 1.0)), mask)
    results = metrics.results()
    return {"max_f": round(results["max_f"], 5), "mae": round(results["mae"], 5), "n_images": results["n_images"]}
