"""FGSM robustness of a saliency checkpoint: max F and MAE on adversarial images at several ε; prints one JSON object.

python -m training.robustness --checkpoint PATH --images DIR --masks DIR [--split FILE] [--eps 1,2,4,8]
    [--fixations CSV]

FGSM (Goodfellow et al., 2015) in the network's input space: ``x' = x + ε·sign(∇ₓ BCE(f(x), mask))``, with ε in
0–255 pixel units (channel c moves by ε / 255 / std_c) and ``x'`` kept inside the range real pixels map to. Each
perturbed input is scored as ``training.evaluate`` scores a checkpoint (probability resized to the mask, uint8), so
ε = 0 reproduces its numbers. This is the saliency analogue of the fooling rate of the human-vs-machine attention
paper: how far max F drops and MAE rises when every pixel may move by ε grey levels against the model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from training.data import DatasetError, Sample, list_pairs, load_mask, load_rgb
from training.evaluate import CheckpointPredictor, EvaluationError, resize_probability
from training.metrics import SaliencyMetrics
from training.transforms import Preprocess, preprocess_image


def pixel_bounds(pre: Preprocess) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(low, high, step)`` ``[3,1,1]`` tensors: the normalized values of pixels 0 and 255, and one grey level."""
    mean = torch.tensor(pre.mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(pre.std, dtype=torch.float32)[:, None, None]
    return (0.0 - mean) / std, (1.0 - mean) / std, 1.0 / (255.0 * std)


def fgsm(
    logits_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mask: torch.Tensor, eps: float, pre: Preprocess
) -> torch.Tensor:
    """One FGSM step of ``eps`` grey levels on a normalized batch ``x`` ``[B,3,S,S]`` against ``mask`` ``[B,1,H,W]``
    (in [0, 1], any size: resized to the model's output); ``logits_of`` maps a batch to the model's final logits.
    Returns the perturbed batch, within the pixel range."""
    low, high, step = pixel_bounds(pre)
    x = x.detach().clone().requires_grad_(True)
    logits = logits_of(x)
    target = F.interpolate(mask, size=logits.shape[-2:], mode="bilinear", align_corners=False)
    F.binary_cross_entropy_with_logits(logits, target).backward()
    perturbed = x.detach() + eps * step * x.grad.sign()
    return torch.maximum(torch.minimum(perturbed, high), low)


def _final_logits(
    predictor: CheckpointPredictor, sample: Sample, image_size: tuple[int, int]
) -> Callable[[torch.Tensor], torch.Tensor]:
    human = predictor.human_map(sample, image_size)  # once per image, not once per attacked forward pass
    return lambda batch: predictor.forward(batch, human).final


def robustness(
    checkpoint: Path,
    samples: Sequence[Sample],
    eps_values: Sequence[float],
    progress: bool = True,
    fixations_csv: Path | None = None,
) -> dict[str, Any]:
    """Max F and MAE of ``checkpoint`` on ``samples`` clean and under FGSM at each ε (grey levels). A model whose
    attention is the human fixation map (mode=replace) reads it from ``fixations_csv``; the attack moves only the
    pixels, never the fixations."""
    predictor = CheckpointPredictor(checkpoint, fixations_csv=fixations_csv)
    pre = predictor.pre
    scores = {eps: SaliencyMetrics() for eps in (0.0, *eps_values)}
    for sample in tqdm(samples, desc="fgsm", disable=not progress, file=sys.stderr):
        mask = load_mask(sample.mask)
        image = load_rgb(sample.image)
        x = preprocess_image(image, pre)[None]
        target = torch.from_numpy(mask.astype(np.float32))[None, None]
        logits_of = _final_logits(predictor, sample, (image.size[1], image.size[0]))
        for eps, metrics in scores.items():
            attacked = fgsm(logits_of, x, target, eps, pre) if eps > 0 else x
            with torch.no_grad():
                prob = torch.sigmoid(logits_of(attacked))[0, 0].numpy()
            metrics.update(resize_probability(prob, mask.shape), mask)
    clean = scores[0.0].results()
    attacks = []
    for eps in eps_values:
        result = scores[eps].results()
        attacks.append(
            {
                "eps": eps,
                "max_f": result["max_f"],
                "mae": result["mae"],
                "max_f_drop": clean["max_f"] - result["max_f"],
                "mae_rise": result["mae"] - clean["mae"],
            }
        )
    return {
        "evaluated": predictor.description,
        "n_images": len(samples),
        "clean": {"max_f": clean["max_f"], "mae": clean["mae"]},
        "fgsm": attacks,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a training.train checkpoint (.pt)")
    parser.add_argument("--images", required=True, help="folder of images")
    parser.add_argument("--masks", required=True, help="folder of ground-truth masks (binarized at >= 128)")
    parser.add_argument("--split", help="file of stems to evaluate, one per line (default: every image)")
    parser.add_argument("--fixations", help="eye-fixation csv (stem,x,y), for a model that reads human fixation maps")
    parser.add_argument("--eps", default="1,2,4,8", help="comma list of ε in grey levels (0-255 pixel units)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        eps_values = [float(e) for e in args.eps.split(",") if e.strip()]
    except ValueError:
        parser.exit(2, f"error: --eps takes a comma list of numbers, got {args.eps!r}\n")
    try:
        if not eps_values or any(not 0 < e <= 255 for e in eps_values):
            raise EvaluationError(f"--eps takes grey levels in (0, 255], got {args.eps!r}")
        samples = list_pairs(Path(args.images), Path(args.masks), Path(args.split) if args.split else None)
        started = time.perf_counter()
        fixations = Path(args.fixations) if args.fixations else None
        result = robustness(Path(args.checkpoint), samples, eps_values, not args.no_progress, fixations)
    except (DatasetError, EvaluationError) as exc:
        parser.exit(2, f"error: {exc}\n")
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
