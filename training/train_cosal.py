"""Train the within-image co-saliency network on composed scenes (``training.cosal_data``) with a frozen encoder.

python -m training.train_cosal --config training/configs/cosal_effl0.yaml [--resume]

The encoder is frozen (as the paper freezes its ImageNet VGG16), so its features of every scene are computed once,
kept in memory as fp16, and each step runs only the feature-sensitive block, the decoder, the RPN and the regional
feature mapping head (``CoSaliencyNet.decode``). The loss is eq. (5) with α = β = γ = 1:

- decoder: BCE of every side output against the co-saliency mask (the group's visible pixels), averaged;
- RPN (eq. 7–8): every instance's box, co-salient or distractor, is a salient object to propose;
- RFM (eq. 9–10): IoU-weighted triplets of region vectors mined online (``triplets: online``): the candidates are
  the ground-truth boxes and the RPN's own proposals (top ``proposals`` by objectness after NMS 0.7) that cover an
  instance with IoU ≥ 0.5; ``triplets: offline`` (the ablation) draws them from ground-truth boxes jittered once
  per scene before training instead.

Checkpoints (``last.pt`` every epoch, ``best.pt`` by validation co-saliency max F) use ``training.train``'s format, so
``python -m export`` turns them into bundles. Prints one JSON line per epoch.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from models import build_model
from models.cosal import CoSaliencyNet, decode_boxes, flatten_rpn_outputs
from training.config import ConfigError, read_config_file
from training.cosal_losses import (
    OBJECTNESS_PRIOR,
    box_iou,
    nms,
    rpn_loss,
    semi_hard_triplets,
    weighted_triplet_loss,
)
from training.metrics import SaliencyMetrics, to_uint8
from training.train import restore_rng, rng_state, save_checkpoint, seed_everything
from training.transforms import Preprocess, preprocess_image

log = logging.getLogger("training.train_cosal")

EFFICIENTNET_LITE_MEAN = (0.4980392, 0.4980392, 0.4980392)  # (x - 127) / 128, the Lite family's normalisation
EFFICIENTNET_LITE_STD = (0.5019608, 0.5019608, 0.5019608)
PROPOSAL_NMS_IOU = 0.7
REGION_MIN_IOU = 0.5


class CosalConfigError(ConfigError):
    """A co-saliency training config is malformed."""


@dataclass
class CosalConfig:
    """What ``training.train_cosal`` reads from YAML (every key is listed here; unknown keys are refused)."""

    name: str
    train_scenes: str
    val_scenes: str
    model: str = "cosal_effl0"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = "wheel"
    preprocess: dict[str, Any] = field(default_factory=dict)
    triplets: str = "online"
    rpn_confidence: str = "hard_negatives"
    proposals: int = 32
    jitter_boxes: int = 4
    batch_size: int = 8
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    out_dir: str = "runs/cosal_effl0"

    @classmethod
    def from_yaml(cls, path: Path) -> CosalConfig:
        raw = read_config_file(path)
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise CosalConfigError(f"{path}: unknown keys {unknown}")
        config = cls(**raw)
        if config.triplets not in ("online", "offline"):
            raise CosalConfigError(f"{path}: triplets must be online or offline, not {config.triplets!r}")
        if config.rpn_confidence not in ("hard_negatives", "focal", "quality_focal"):
            raise CosalConfigError(
                f"{path}: rpn_confidence must be hard_negatives, focal or quality_focal, not {config.rpn_confidence!r}"
            )
        return config

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Scene:
    """One composed scene at network scale: boxes in input pixels, instance and kind ids unique across the set."""

    image: Path
    mask: np.ndarray  # [H, W] bool at the scene's own size
    boxes: Tensor  # [G, 4]
    instance: Tensor  # [G]
    kind: Tensor  # [G]
    jittered: Tensor | None = None  # [G*J, 5] (index into boxes, x1, y1, x2, y2) for offline triplets


def read_scenes(folder: Path, input_size: int) -> list[Scene]:
    """Scenes of a ``training.cosal_data`` folder; copies of one object share a kind, each distractor has its own."""
    annotations = Path(folder) / "annotations.jsonl"
    if not annotations.is_file():
        raise CosalConfigError(f"no scenes in {folder} (run python -m training.cosal_data --out {folder} ...)")
    scenes = []
    for index, line in enumerate(annotations.read_text().splitlines()):
        record = json.loads(line)
        sx, sy = input_size / record["width"], input_size / record["height"]
        instances = record["instances"]
        boxes = torch.tensor(
            [[i["box"][0] * sx, i["box"][1] * sy, i["box"][2] * sx, i["box"][3] * sy] for i in instances]
        )
        with Image.open(Path(folder) / "masks" / f"{record['id']}.png") as img:
            mask = np.asarray(img) >= 128
        scenes.append(
            Scene(
                image=Path(folder) / "images" / f"{record['id']}.jpg",
                mask=mask,
                boxes=boxes,
                instance=torch.tensor([index * 16 + i["id"] for i in instances]),
                kind=torch.tensor([index * 16 + i["group"] for i in instances]),
            )
        )
    return scenes


def jitter_boxes(boxes: Tensor, count: int, generator: torch.Generator, min_iou: float = REGION_MIN_IOU) -> Tensor:
    """``count`` random shifts/rescalings of each box that keep IoU ≥ ``min_iou`` with it: ``[G*count, 5]`` rows of
    (box index, x1, y1, x2, y2)."""
    rows = []
    for index, box in enumerate(boxes):
        size = box[2:] - box[:2]
        kept = 0
        while kept < count:
            shift = (torch.rand(2, generator=generator) - 0.5) * 0.4 * size
            scale = torch.exp((torch.rand(2, generator=generator) - 0.5) * 0.5)
            centre = (box[:2] + box[2:]) / 2 + shift
            candidate = torch.cat([centre - size * scale / 2, centre + size * scale / 2])
            if box_iou(candidate[None], box[None])[0, 0] >= min_iou:
                rows.append(torch.cat([torch.tensor([float(index)]), candidate]))
                kept += 1
    return torch.stack(rows) if rows else torch.zeros(0, 5)


@torch.no_grad()
def encode_all(model: CoSaliencyNet, scenes: list[Scene], pre: Preprocess) -> list[Tensor]:
    """The frozen encoder's features of every scene, level by level, as fp16 ``[N, C, h, w]`` tensors."""
    model.encoder.eval()
    levels: list[list[Tensor]] = []
    for scene in scenes:
        with Image.open(scene.image) as img:
            x = preprocess_image(img.convert("RGB"), pre)[None]
        for level, feature in enumerate(model.encoder(x)):
            if len(levels) <= level:
                levels.append([])
            levels[level].append(feature.half())
    return [torch.cat(level) for level in levels]


def _candidates(
    scenes: list[Scene], objectness: Tensor, deltas: Tensor, anchors: Tensor, input_size: int, config: CosalConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Regions for the triplet loss: ``[K,5]`` RoIs (batch index, box) and each one's instance, kind and IoU."""
    rois, instances, kinds, ious = [], [], [], []
    for b, scene in enumerate(scenes):
        boxes = [scene.boxes]
        if config.triplets == "online":
            with torch.no_grad():
                proposals = decode_boxes(deltas[b].detach(), anchors).clamp(0, input_size)
                top = objectness[b].detach().topk(min(4 * config.proposals, objectness.shape[1])).indices
                keep = top[nms(proposals[top], objectness[b, top], PROPOSAL_NMS_IOU)][: config.proposals]
            boxes.append(proposals[keep])
        elif scene.jittered is not None:
            boxes.append(scene.jittered[:, 1:])
        candidates = torch.cat(boxes)
        overlap = box_iou(candidates, scene.boxes)
        best, matched = overlap.max(dim=1)
        covered = best >= REGION_MIN_IOU
        candidates, matched, best = candidates[covered], matched[covered], best[covered]
        rois.append(torch.cat([torch.full((len(candidates), 1), float(b)), candidates], dim=1))
        instances.append(scene.instance[matched])
        kinds.append(scene.kind[matched])
        ious.append(best)
    return torch.cat(rois), torch.cat(instances), torch.cat(kinds), torch.cat(ious)


def training_loss(
    model: CoSaliencyNet, features: list[Tensor], scenes: list[Scene], config: CosalConfig
) -> tuple[Tensor, dict[str, float]]:
    """Eq. (5) on one batch of cached encoder features."""
    out = model.decode([f.float() for f in features])
    size = model.input_size
    target = torch.stack(
        [torch.from_numpy(np.asarray(Image.fromarray(s.mask).resize((size, size)), dtype=np.float32)) for s in scenes]
    )[:, None]
    decoder = torch.stack(
        [
            F.binary_cross_entropy_with_logits(side, F.interpolate(target, size=side.shape[-2:], mode="area"))
            for side in out.saliency
        ]
    ).mean()
    objectness, deltas = flatten_rpn_outputs(out.extras["rpn_objectness"], out.extras["rpn_deltas"])
    anchors = model.anchors(tuple(out.extras["rpn_objectness"].shape[-2:]))
    rpn, rpn_parts = rpn_loss(objectness, deltas, anchors, [s.boxes for s in scenes], confidence=config.rpn_confidence)
    rois, instance, kind, iou = _candidates(scenes, objectness, deltas, anchors, size, config)
    vectors = model.region_embeddings(out.embedding, rois)
    anchor, positive, negative, weights = semi_hard_triplets(vectors, instance, kind, iou)
    triplet = (
        weighted_triplet_loss(vectors[anchor], vectors[positive], vectors[negative], weights)
        if len(anchor)
        else vectors.sum() * 0.0
    )
    loss = decoder + rpn + triplet
    parts = {"decoder": float(decoder.detach()), "rpn": float(rpn.detach()), "triplet": float(triplet.detach())}
    parts["triplets"] = float(len(anchor))
    return loss, parts | {f"rpn_{k}": v for k, v in rpn_parts.items()}


@torch.no_grad()
def validate(model: CoSaliencyNet, features: list[Tensor], scenes: list[Scene], batch_size: int) -> dict[str, float]:
    """Co-saliency max F and MAE of the final side output on validation scenes, at each scene's size, and the mean
    squared distance between the region vectors of the true boxes of one scene: copies of one object
    (``copy_distance``) and different objects (``other_distance``); equal distances mean the vectors collapsed."""
    model.eval()
    metrics = SaliencyMetrics()
    copy_distance, other_distance = [], []
    for start in range(0, len(scenes), batch_size):
        batch = scenes[start : start + batch_size]
        out = model.decode([f[start : start + batch_size].float() for f in features])
        for b, (prob, scene) in enumerate(zip(torch.sigmoid(out.final)[:, 0], batch, strict=True)):
            height, width = scene.mask.shape
            resized = F.interpolate(prob[None, None], size=(height, width), mode="bilinear", align_corners=False)
            metrics.update(to_uint8(resized[0, 0].numpy()), scene.mask)
            rois = torch.cat([torch.full((len(scene.boxes), 1), float(b)), scene.boxes], dim=1)
            distance = torch.cdist(*(2 * [model.region_embeddings(out.embedding, rois)])).pow(2)
            pair = torch.triu(torch.ones_like(distance, dtype=torch.bool), diagonal=1)
            same = scene.kind[:, None] == scene.kind[None, :]
            copy_distance.append(distance[pair & same])
            other_distance.append(distance[pair & ~same])
    results = metrics.results()
    return {
        "max_f": results["max_f"],
        "mae": results["mae"],
        "copy_distance": float(torch.cat(copy_distance).mean()),
        "other_distance": float(torch.cat(other_distance).mean()) if torch.cat(other_distance).numel() else 0.0,
    }


def train(config: CosalConfig, resume: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns the best epoch and its validation numbers."""
    torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model(config.model, **config.model_kwargs)
    if not isinstance(model, CoSaliencyNet) or not model.frozen_encoder:
        raise CosalConfigError(f"{config.model} is not a co-saliency net with a frozen encoder")
    if config.pretrained:
        model.encoder.load_pretrained(None if config.pretrained == "wheel" else config.pretrained)
    if config.rpn_confidence in ("focal", "quality_focal"):  # RetinaNet's prior: all anchors in the loss start unlikely
        nn.init.constant_(model.rpn.objectness.bias, -math.log((1 - OBJECTNESS_PRIOR) / OBJECTNESS_PRIOR))
    pre = Preprocess(
        input_size=model.input_size,
        mean=tuple(config.preprocess.get("mean", EFFICIENTNET_LITE_MEAN)),
        std=tuple(config.preprocess.get("std", EFFICIENTNET_LITE_STD)),
    )
    train_scenes = read_scenes(Path(config.train_scenes), model.input_size)
    val_scenes = read_scenes(Path(config.val_scenes), model.input_size)
    if config.triplets == "offline":
        generator = torch.Generator().manual_seed(config.seed)
        for scene in train_scenes:
            scene.jittered = jitter_boxes(scene.boxes, config.jitter_boxes, generator)
    started = time.perf_counter()
    train_features = encode_all(model, train_scenes, pre)
    val_features = encode_all(model, val_scenes, pre)
    log.info("encoded %d + %d scenes in %.0f s", len(train_scenes), len(val_scenes), time.perf_counter() - started)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_scenes) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    start_epoch, best = 0, {"max_f": -1.0, "epoch": -1}
    last = out_dir / "last.pt"
    if resume and last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        restore_rng(state["rng"])
        start_epoch, best = state["epoch"] + 1, state["best"]
    checkpoint_config = config.to_dict() | {"preprocess": pre.to_dict(), "data": {"train": []}}
    for epoch in range(start_epoch, config.epochs):
        model.train()
        epoch_started = time.perf_counter()
        order = torch.randperm(len(train_scenes)).tolist()
        totals: dict[str, float] = {}
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size : (step + 1) * config.batch_size]
            loss, parts = training_loss(
                model, [f[batch] for f in train_features], [train_scenes[i] for i in batch], config
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            for key, value in parts.items():
                totals[key] = totals.get(key, 0.0) + value / steps_per_epoch
        scores = validate(model, val_features, val_scenes, config.batch_size)
        line = {"epoch": epoch + 1, "seconds": round(time.perf_counter() - epoch_started, 1)}
        line |= {f"train_{k}": round(v, 5) for k, v in totals.items()}
        line |= {f"val_{k}": round(v, 5) for k, v in scores.items()}
        print(json.dumps(line), flush=True)
        state = {
            "model": model.state_dict(),
            "model_name": config.model,
            "model_kwargs": config.model_kwargs,
            "config": checkpoint_config,
            "epoch": epoch,
            "best": best,
        }
        if scores["max_f"] > best["max_f"]:
            best = {"max_f": scores["max_f"], "mae": scores["mae"], "epoch": epoch + 1}
            state["best"] = best
            save_checkpoint(out_dir / "best.pt", state)
        resumable = {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": rng_state()}
        save_checkpoint(last, state | resumable)
    return {"out_dir": str(out_dir), "best": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/last.pt if it exists")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = CosalConfig.from_yaml(args.config)
        print(json.dumps(train(config, args.resume)))
    except CosalConfigError as exc:
        parser.exit(2, f"error: {exc}\n")


if __name__ == "__main__":
    sys.exit(main())
