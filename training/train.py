"""Train a registered model from a YAML config; resumable, with the best checkpoint kept by validation max F.

python -m training.train --config training/configs/picanet_lite_cpu.yaml [--resume] [--epochs N] [--max-minutes M]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from models import build_model
from training.config import ConfigError, DatasetSpec, TrainConfig, load_config
from training.data import SaliencyDataset, fixations_by_image, list_pairs
from training.losses import build_loss
from training.metrics import SaliencyMetrics, to_uint8
from training.transforms import EvalTransform, TrainTransform

log = logging.getLogger("training.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The Python, NumPy and torch RNG states, for a checkpoint that resumes exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the RNG states :func:`rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_dataset(specs: list[DatasetSpec], root: Path, transform) -> SaliencyDataset:
    """The concatenated datasets, each listed ``repeat`` times (every pair of the pool is equally likely); when any
    names a fixation csv, every item also yields a fixation density."""
    samples = []
    fixations: dict[Path, np.ndarray] | None = None
    for spec in specs:
        split = root / spec.split if spec.split else None
        pairs = list_pairs(root / spec.images, root / spec.masks, split)
        samples += pairs * spec.repeat
        if spec.fixations:
            fixations = (fixations or {}) | fixations_by_image(root / spec.fixations, pairs)
    return SaliencyDataset(samples, transform, fixations=fixations)


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    opt = cfg.optim
    encoder = [p for n, p in model.named_parameters() if n.startswith("encoder.")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
    groups = [
        {"params": encoder, "lr": opt.lr * opt.encoder_lr_mult, "lr_mult": opt.encoder_lr_mult},
        {"params": rest, "lr": opt.lr, "lr_mult": 1.0},
    ]
    groups = [g for g in groups if g["params"]]
    if opt.kind == "sgd":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay)
    if opt.kind == "adam":
        return torch.optim.Adam(groups, lr=opt.lr, weight_decay=opt.weight_decay)
    if opt.kind == "adamw":
        return torch.optim.AdamW(groups, lr=opt.lr, weight_decay=opt.weight_decay)
    raise ValueError(f"unknown optimizer {opt.kind!r} (sgd, adam, adamw)")


def learning_rate_factor(cfg: TrainConfig, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` ∈ [0, 1] of training (warmup, then schedule)."""
    sched = cfg.schedule
    warm = sched.warmup_epochs / max(sched.epochs, 1)
    if warm > 0 and progress < warm:
        return max(progress / warm, 1e-3)  # linear from ~0, never above 1
    if sched.kind == "cosine":
        t = (progress - warm) / max(1 - warm, 1e-8)
        return 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    if sched.kind == "linear":
        return max(0.0, 1 - (progress - warm) / max(1 - warm, 1e-8))
    if sched.kind == "multistep":
        return sched.gamma ** sum(progress >= m for m in sched.milestones)
    if sched.kind == "constant":
        return 1.0
    raise ValueError(f"unknown schedule {sched.kind!r} (cosine, linear, multistep, constant)")


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: SaliencyDataset) -> dict[str, float]:
    """Max F and MAE at the masks' own resolution, on uint8 maps as a saved PNG would hold them."""
    model.eval()
    metrics = SaliencyMetrics()
    for i in range(len(dataset)):
        image, mask = dataset[i]
        logits = model(image[None]).final
        prob = torch.sigmoid(F.interpolate(logits, size=mask.shape[-2:], mode="bilinear", align_corners=False))
        metrics.update(to_uint8(prob[0, 0].numpy()), mask[0].numpy() > 0.5)
    return metrics.results()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically so an interrupted save never leaves a truncated checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def append_log_row(path: Path, row: dict[str, Any]) -> None:
    """Append one epoch to the CSV log. A log begun by an earlier version keeps its header: columns it lacks
    are dropped from the row (they stay in the JSON line on stdout) so resumed runs never misalign columns."""
    fieldnames = list(row)
    if path.exists():
        with open(path, newline="") as fh:
            fieldnames = next(csv.reader(fh), fieldnames)
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fieldnames, extrasaction="ignore")
        if fh.tell() == 0:
            writer.writeheader()
        writer.writerow(row)


def init_weights_from_checkpoint(model: torch.nn.Module, model_name: str, path: Path) -> None:
    """Start from another run's weights (e.g. a shorter first stage); optimizer, schedule and RNG start fresh."""
    if not path.is_file():
        raise ConfigError(f"init_from checkpoint not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("model_name") != model_name:
        raise ConfigError(f"init_from {path} holds {state.get('model_name')!r}, but this config trains {model_name!r}")
    model.load_state_dict(state["model"])
    log.info("model weights initialised from %s (epoch %d of that run)", path, state["epoch"] + 1)


def cpu_lacks_native_bf16(cpuinfo: str) -> bool:
    """Whether an x86 ``/proc/cpuinfo`` text lists no bfloat16 instructions (``avx512_bf16`` or ``amx_bf16``): there
    bf16 autocast is emulated, and a step took ~5× as long as in fp32 (AMD EPYC with AVX2 only: 10.5 s against 2.2 s
    a step of the attention study; on the AVX-512 BF16 hosts of MEASURED.md it was 1.2–1.4× faster than fp32)."""
    flags = {word for line in cpuinfo.splitlines() if line.startswith("flags") for word in line.split()}
    return bool(flags) and not flags & {"avx512_bf16", "amx_bf16"}


def _warn_if_bf16_is_emulated(cfg: TrainConfig) -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if cfg.run.bf16 and cpuinfo.is_file() and cpu_lacks_native_bf16(cpuinfo.read_text()):
        log.warning(
            "run.bf16 is on but this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16): autocast is emulated "
            "and about 5x slower than fp32 here; set run.bf16: false in the config for this host"
        )


def train(cfg: TrainConfig, resume: bool = False, max_minutes: float | None = None) -> dict[str, Any]:
    """Run (or resume) training; returns the final summary (best epoch and its validation numbers).

    ``max_minutes`` stops cleanly after the epoch during which this call's wall time crosses it (checkpoints
    written as usual, so ``--resume`` continues the schedule).
    """
    call_started = time.time()
    _warn_if_bf16_is_emulated(cfg)
    torch.set_num_threads(cfg.run.threads)
    seed_everything(cfg.run.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(cfg.data.root)

    model = build_model(cfg.model, **cfg.model_kwargs)
    if cfg.pretrained:
        load = getattr(getattr(model, "encoder", None), "load_pretrained", None)
        if load is None:
            raise ConfigError(
                f"{cfg.model} has no encoder that loads torchvision weights (the compact encoders have none); "
                "remove `pretrained:` or pick a VGG16/ResNet-50 model"
            )
        load(cfg.pretrained)
    if cfg.init_from:
        init_weights_from_checkpoint(model, cfg.model, Path(cfg.init_from))
    optimizer = build_optimizer(model, cfg)
    loss_fn = build_loss(cfg.loss, model)
    train_set = build_dataset(cfg.data.train, root, TrainTransform(cfg.preprocess, **cfg.data.augment))
    val_set = build_dataset([cfg.data.val], root, EvalTransform(cfg.preprocess)) if cfg.data.val else None
    human_attention = getattr(model, "mode", None) == "replace"
    if human_attention and (train_set.fixations is None or val_set is not None):
        raise ConfigError(
            f"{cfg.model} with mode=replace reads each image's human fixation map: give every training set "
            "`fixations:` and no `val:` (validation sets without fixations cannot feed it; the last epoch is kept)"
        )

    start_epoch, best = 0, {"max_f": -1.0, "epoch": -1}
    last_path = out / "last.pt"
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = state["epoch"] + 1, state["best"]
        restore_rng(state["rng"])
        log.info("resumed from %s at epoch %d (best max F %.4f)", last_path, start_epoch, best["max_f"])
    elif resume:
        log.warning("--resume given but %s does not exist; starting from scratch", last_path)

    steps_per_epoch = math.ceil(len(train_set) / cfg.run.batch_size)
    if cfg.run.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.run.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.schedule.epochs
    log_path = out / "log.csv"
    for epoch in range(start_epoch, cfg.schedule.epochs):
        loader_gen = torch.Generator().manual_seed(cfg.run.seed * 100_003 + epoch)
        loader = DataLoader(
            train_set,
            batch_size=cfg.run.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=cfg.run.num_workers,
            worker_init_fn=_seed_worker,
            generator=loader_gen,
            persistent_workers=False,
        )
        model.train()
        sums: dict[str, float] = {}
        started = time.time()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.schedule.epochs}", leave=False)
        for step, (images, masks, *fixation_maps) in enumerate(loader):
            if step >= steps_per_epoch:
                break
            factor = learning_rate_factor(cfg, (epoch * steps_per_epoch + step) / total_steps)
            for group in optimizer.param_groups:
                group["lr"] = cfg.optim.lr * group["lr_mult"] * factor
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.run.bf16):
                # Explicit Attention (Human): the human fixation map replaces the model's attention
                output = model(images, external_attention=fixation_maps[0]) if human_attention else model(images)
            loss, parts = loss_fn(output, masks, *fixation_maps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            bar.set_postfix(loss=f"{sums['loss'] / (step + 1):.4f}")
            bar.update()
        bar.close()
        n = steps_per_epoch
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": cfg.optim.lr * factor,
            "seconds": round(time.time() - started, 1),
        }
        row.update({f"train_{k}": round(v / n, 5) for k, v in sums.items()})
        if val_set is not None:
            row.update({f"val_{k}": round(v, 5) for k, v in validate(model, val_set).items() if k != "n_images"})
        is_best = val_set is not None and row["val_max_f"] > best["max_f"]
        if is_best:
            best = {"max_f": row["val_max_f"], "mae": row["val_mae"], "epoch": epoch + 1}
        checkpoint = {
            "model": model.state_dict(),
            "model_name": cfg.model,
            "model_kwargs": cfg.model_kwargs,
            "config": cfg.to_dict(),
            "epoch": epoch,
            "best": best,
        }
        if is_best or val_set is None:
            save_checkpoint(out / "best.pt", checkpoint)
        checkpoint.update(
            optimizer=optimizer.state_dict(),
            rng=rng_state(),
        )
        save_checkpoint(last_path, checkpoint)
        append_log_row(log_path, row)
        print(json.dumps(row), flush=True)
        if max_minutes is not None and time.time() - call_started >= 60 * max_minutes:
            log.info("stopping after epoch %d: --max-minutes %.1f reached", epoch + 1, max_minutes)
            return {"out_dir": str(out), "best": best, "stopped_after_epoch": epoch + 1}
    return {"out_dir": str(out), "best": best}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML training config")
    parser.add_argument("--resume", action="store_true", help="continue from <out_dir>/last.pt if present")
    parser.add_argument("--epochs", type=int, help="override schedule.epochs")
    parser.add_argument("--out-dir", help="override out_dir")
    parser.add_argument("--max-minutes", type=float, help="stop after the epoch that crosses this wall time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    if args.epochs:
        cfg.schedule.epochs = args.epochs
    if args.out_dir:
        cfg.out_dir = args.out_dir
    print(json.dumps(train(cfg, resume=args.resume, max_minutes=args.max_minutes)))


if __name__ == "__main__":
    main()
