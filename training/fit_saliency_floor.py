"""Choose a saliency bundle's floor: the probability ``a`` below which its map answers 0 (the rest stretched).

python -m training.fit_saliency_floor --bundle default --images DIR --masks DIR [--split FILE] [--count 400]

A network trained with BCE leaves a faint haze on background clutter; MAE counts every grey pixel, while max F (a
threshold sweep whose best threshold lies far above the haze) barely sees it. The floor maps each probability ``p``
to ``clamp((p − a) / (1 − a), 0, 1)``: the haze goes to 0 and the ranking of every pixel above ``a`` is kept. Fit
it on training images (never on a split you report), bake it into the graph with ``python -m export
--saliency-floor A``, and measure held-out splits with ``training.evaluate``. The floor is applied to the
network-resolution map, before the resize to the mask's size, as the exported graph does. Prints one JSON object:
MAE and max F (PySODMetrics definitions) per floor on these images, and the floor with the lowest MAE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data import Sample, list_pairs, load_mask
from training.evaluate import BundlePredictor, resize_probability
from training.metrics import normalize_prediction, precision_recall_f
from training.transforms import preprocess_image

FLOORS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def apply_floor(probability: np.ndarray, floor: float) -> np.ndarray:
    """``clamp((p − floor) / (1 − floor), 0, 1)`` of a probability map (what ``--saliency-floor`` bakes in)."""
    return np.clip((probability.astype(np.float32) - floor) / (1 - floor), 0.0, 1.0)


def fit(
    predictor: BundlePredictor, samples: list[Sample], floors: tuple[float, ...], progress: bool = True
) -> dict[str, Any]:
    """MAE and max F of each floor's maps over ``samples`` (image/mask pairs), and the floor with the lowest MAE."""
    errors: dict[float, list[float]] = {f: [] for f in floors}
    curves: dict[float, list[np.ndarray]] = {f: [] for f in floors}
    for sample in tqdm(samples, desc="images", disable=not progress, leave=False):
        with Image.open(sample.image) as img:
            batch = preprocess_image(img.convert("RGB"), predictor.pre)[None].numpy()
        mask = load_mask(sample.mask)
        probability = predictor.session.run([predictor.output_name], {predictor.input_name: batch})[0][0, 0]
        for floor in floors:
            pred = normalize_prediction(resize_probability(apply_floor(probability, floor), mask.shape))
            errors[floor].append(float(np.mean(np.abs(pred - mask))))
            curves[floor].append(precision_recall_f(pred, mask)[2])
    rows = {
        str(f): {"mae": round(float(np.mean(errors[f])), 5), "max_f": round(float(np.mean(curves[f], axis=0).max()), 5)}
        for f in floors
    }
    return {"images": len(samples), "floors": rows, "best_floor": min(floors, key=lambda f: rows[str(f)]["mae"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fit_saliency_floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default="default", help="bundle name under bundles/ or a bundle folder")
    parser.add_argument("--variant", help="the variant to run (default: the manifest's default)")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--masks", type=Path, required=True)
    parser.add_argument("--split", type=Path, help="only the stems this file lists")
    parser.add_argument("--count", type=int, default=400, help="a seeded random sample of this many pairs (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--floors", type=float, nargs="+", default=list(FLOORS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if any(not 0 <= f < 1 for f in args.floors):
        parser.error("--floors must lie in [0, 1)")
    samples = list_pairs(args.images, args.masks, args.split)
    if args.count and args.count < len(samples):
        chosen = np.random.default_rng(args.seed).choice(len(samples), args.count, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    predictor = BundlePredictor(args.bundle, args.variant, args.threads)
    result = fit(predictor, samples, tuple(args.floors), not args.no_progress)
    print(json.dumps({"bundle": predictor.description, "images_dir": str(args.images), **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
