"""Train a co-saliency bundle's instance quality head (``models.cosal.InstanceQualityHead``) on composed scenes.

python -m training.train_instance_quality --bundle runs/cosal_bundle_qfl_crops --train-scenes runs/cosal/train \
    --val-scenes runs/cosal/val --out runs/instance_quality [--train-limit 2000] [--epochs 12]

The head is a second stage after the bundle's RPN (``proposals: scored`` in ``service/grouping.py``): it scores each
candidate box (``service.grouping.candidate_boxes``) by its predicted IoU with the object it frames, reading what the
service gives it (``service.grouping.quality_inputs``: the bundle's crop encoder on the box's crop, the map in and
around the box). So the training inputs come from the bundle itself, through ONNX Runtime and the service's own
functions: they are what the head sees in the service. They are computed once per scene and cached in ``OUT/inputs``
(one file per chunk of scenes, so an interrupted run keeps what it computed). The target of a candidate is its
highest box IoU with any true instance, co-salient copy or distractor (every salient object is an instance); the loss
is binary cross-entropy against that soft target (as in GFL's quality focal loss, without the focusing term).

Writes ``OUT/best.pt`` (lowest validation loss; ``python -m export --quality-head`` adds it to a bundle) and
``OUT/log.jsonl`` (one JSON line per epoch, also printed: losses and the validation AUC of telling candidates at
IoU ≥ 0.5 from the rest).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.cosal import InstanceQualityHead
from service.engine import Engine
from service.grouping import box_iou, candidate_boxes, crop_features, quality_inputs
from training.cosal_metrics import MATCH_IOU
from training.evaluate_cosal import EvalScene, read_eval_scenes, run_bundle
from training.train import save_checkpoint, seed_everything

log = logging.getLogger("training.train_instance_quality")

CHUNK = 250  # scenes per cached input file
HIDDEN = 64


def scene_candidates(engine: Engine, scene: EvalScene) -> tuple[np.ndarray, np.ndarray]:
    """One scene's candidate inputs ``[N, C + 2, s, s]`` and targets ``[N]`` (best box IoU with a true instance)."""
    if engine.manifest.grouping is None:
        raise ValueError(f"bundle {engine.manifest.name} has no grouping settings (not a co-saliency bundle)")
    found = run_bundle(engine, [scene], progress=False)[0]
    out, size = found.outputs, engine.input_size
    boxes = candidate_boxes(out["probability"], out["boxes"], out["scores"], engine.manifest.grouping, size)
    if len(boxes) == 0:
        return np.zeros((0, 0, 0, 0), dtype=np.float16), np.zeros(0, dtype=np.float32)
    features = crop_features(found.image, boxes, engine.instance_encoders(), size)
    inputs = quality_inputs(features, out["probability"], boxes, size)
    height, width = scene.mask.shape
    pixels = boxes.astype(np.float64) * np.asarray([width, height, width, height]) / size
    targets = box_iou(pixels, scene.boxes).max(axis=1) if len(scene.boxes) else np.zeros(len(boxes))
    return inputs.astype(np.float16), targets.astype(np.float32)


def bundle_identity(engine: Engine) -> str:
    """What the cached inputs depend on: the bundle's network and crop encoder files (their checksums)."""
    manifest = engine.manifest
    names = [manifest.variants[engine.info.variant].file, *([manifest.crops.file] if manifest.crops else [])]
    return " ".join(f"{name}:{manifest.files[name].sha256}" for name in names)


def cached_candidates(engine: Engine, scenes: list[EvalScene], folder: Path, name: str) -> tuple[np.ndarray, ...]:
    """Every scene's candidates (inputs, targets), computed once per chunk of :data:`CHUNK` scenes and cached; a
    cache written from another bundle is refused rather than mixed in."""
    folder.mkdir(parents=True, exist_ok=True)
    identity = bundle_identity(engine)
    inputs, targets = [], []
    for start in range(0, len(scenes), CHUNK):
        path = folder / f"{name}_{start:05d}_{min(start + CHUNK, len(scenes)):05d}.npz"
        if not path.is_file():
            rows = [
                scene_candidates(engine, scene)
                for scene in tqdm(scenes[start : start + CHUNK], desc=f"{name} {start}", leave=False)
            ]
            chunk = [r for r in rows if len(r[1])]
            if not chunk:
                raise ValueError(f"the bundle proposes no candidate in {name} scenes {start}-{start + len(rows)}")
            tmp = path.with_suffix(".tmp.npz")
            np.savez(
                tmp,
                inputs=np.concatenate([r[0] for r in chunk]),
                targets=np.concatenate([r[1] for r in chunk]),
                bundle=np.asarray(identity),
            )
            tmp.replace(path)
        with np.load(path) as data:
            if "bundle" not in data or str(data["bundle"]) != identity:
                bundle = engine.info.bundle_dir
                raise ValueError(f"{path} was computed from another bundle than {bundle}: use another --out")
            inputs.append(data["inputs"])
            targets.append(data["targets"])
    return np.concatenate(inputs), np.concatenate(targets)


def ranking_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for the ``positive`` mask (Mann-Whitney, ties counted half)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties share their mean rank
    count_pos, count_neg = int(positive.sum()), int((~positive).sum())
    if count_pos == 0 or count_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - count_pos * (count_pos + 1) / 2) / (count_pos * count_neg))


def evaluate(model: InstanceQualityHead, inputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Validation loss and the AUC of telling candidates at IoU ≥ 0.5 from the rest."""
    model.eval()
    logits = []
    with torch.no_grad():
        for start in range(0, len(inputs), 1024):
            logits.append(model(torch.from_numpy(inputs[start : start + 1024].astype(np.float32))))
    joined = torch.cat(logits)
    loss = F.binary_cross_entropy_with_logits(joined, torch.from_numpy(targets)).item()
    auc = ranking_auc(torch.sigmoid(joined).numpy(), targets >= MATCH_IOU)
    return {"val_loss": loss, "val_auc": auc}


def train(args: argparse.Namespace) -> dict[str, Any]:
    seed_everything(args.seed)
    torch.set_num_threads(args.threads)
    engine = Engine(args.bundle, "auto", ["CPUExecutionProvider"], intra_op_threads=args.threads)
    train_scenes = read_eval_scenes(Path(args.train_scenes), args.train_limit)
    val_scenes = read_eval_scenes(Path(args.val_scenes), args.val_limit)
    out = Path(args.out)
    train_x, train_y = cached_candidates(engine, train_scenes, out / "inputs", "train")
    val_x, val_y = cached_candidates(engine, val_scenes, out / "inputs", "val")
    positive = float((train_y >= MATCH_IOU).mean())
    log.info("candidates: %d train (%.3f at IoU >= 0.5), %d val", len(train_y), positive, len(val_y))
    channels, size = train_x.shape[1] - 2, train_x.shape[-1]
    model = InstanceQualityHead(channels, HIDDEN, size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps = args.epochs * math.ceil(len(train_y) / args.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, args.lr, total_steps=steps, pct_start=0.1)
    generator = np.random.default_rng(args.seed)
    best: dict[str, Any] = {}
    for epoch in range(1, args.epochs + 1):
        model.train()
        started, total = time.time(), 0.0
        order = generator.permutation(len(train_y))
        for start in range(0, len(order), args.batch_size):
            batch = order[start : start + args.batch_size]
            logits = model(torch.from_numpy(train_x[batch].astype(np.float32)))
            loss = F.binary_cross_entropy_with_logits(logits, torch.from_numpy(train_y[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        row = {"epoch": epoch, "train_loss": total / len(train_y), **evaluate(model, val_x, val_y)}
        row["seconds"] = round(time.time() - started, 1)
        print(json.dumps(row), flush=True)
        with open(out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if not best or row["val_loss"] < best["val_loss"]:
            best = row
            state = {
                "model": "instance_quality",
                "model_kwargs": {"channels": channels, "hidden": HIDDEN, "size": size},
                "state_dict": model.state_dict(),
                "epoch": epoch,
                "metrics": row,
                "bundle": str(args.bundle),
                "train_scenes": f"{args.train_scenes} ({len(train_scenes)} scenes, {len(train_y)} candidates)",
            }
            save_checkpoint(out / "best.pt", state)
    return best


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, help="co-saliency bundle directory (with crops.onnx)")
    parser.add_argument("--train-scenes", required=True)
    parser.add_argument("--val-scenes", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-limit", type=int, default=None, help="first N training scenes (default all)")
    parser.add_argument("--val-limit", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    best = train(args)
    print(json.dumps({"best": best}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
