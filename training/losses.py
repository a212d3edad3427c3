"""Training losses of the papers, each documented with its equation."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.outputs import AttentionGeometry, ModelOutput

PICANET_SIDE_WEIGHTS = (0.5, 0.5, 0.5, 0.8, 0.8, 1.0)  # γ6 … γ1 (section V-B)
PICANET_GA_WEIGHT = 0.2  # γ_GA


def resize_target(target: Tensor, size: Sequence[int]) -> Tensor:
    """Ground truth ``[B,1,H,W]`` in {0,1} → ``size`` by area averaging (soft values at object borders)."""
    if tuple(target.shape[-2:]) == tuple(size):
        return target
    return (
        F.adaptive_avg_pool2d(target, size)
        if target.shape[-1] >= size[-1]
        else F.interpolate(target, size=size, mode="bilinear", align_corners=False)
    )


def soft_iou_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``1 - (Σ p·g + 1) / (Σ (p + g - p·g) + 1)`` per image, averaged over the batch."""
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(1, 2, 3))
    union = (prob + target - prob * target).sum(dim=(1, 2, 3))
    return (1 - (inter + 1) / (union + 1)).mean()


def global_attention_target(target: Tensor, geometry: AttentionGeometry, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Eq. (7): for each pixel of the GAP map, the normalized ground-truth attention over the grid cells.

    Background pixels should attend to the foreground cells and foreground pixels to the background cells.

    Returns:
        ``A [B,K*K,H,W]`` and a ``valid [B,1,H,W]`` mask: pixels whose opposite region has no grid cell are
        left out (eq. 7 is undefined there).
    """
    g = (resize_target(target, size) >= 0.5).float()
    k, d, o = geometry.grid, geometry.dilation, geometry.offset
    span = (k - 1) * d + 1
    cells = g[:, :, o : o + span : d, o : o + span : d].reshape(g.shape[0], k * k, 1, 1)
    fg_norm = cells / cells.sum(dim=1, keepdim=True).clamp_min(1e-12)
    bg_cells = 1 - cells
    bg_norm = bg_cells / bg_cells.sum(dim=1, keepdim=True).clamp_min(1e-12)
    attention = torch.where(g > 0.5, bg_norm, fg_norm)
    has_fg = cells.sum(dim=1, keepdim=True) > 0
    has_bg = bg_cells.sum(dim=1, keepdim=True) > 0
    valid = torch.where(g > 0.5, has_bg, has_fg).float()
    return attention, valid


def global_attention_loss(alpha: Tensor, target: Tensor, geometry: AttentionGeometry) -> Tensor:
    """Eq. (8): mean over pixels of KL(A^{w,h} || alpha^{w,h}) (pixels where A is undefined are skipped)."""
    attention, valid = global_attention_target(target, geometry, alpha.shape[-2:])
    log_alpha = torch.log(alpha.clamp_min(1e-12))
    kl = (torch.xlogy(attention, attention) - attention * log_alpha).sum(dim=1, keepdim=True)
    return (kl * valid).sum() / (valid.numel())


def picanet_loss(
    output: ModelOutput,
    target: Tensor,
    geometry: Sequence[AttentionGeometry],
    side_weights: Sequence[float] = PICANET_SIDE_WEIGHTS,
    ga_weight: float = PICANET_GA_WEIGHT,
    iou_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. (9): ``Σ γ^i L_S^i + γ_GA L_GA`` with pixel BCE (eq. 6) on every side output.

    ``iou_weight > 0`` adds a soft-IoU term to every side output, weighted by the same γ^i (a deviation for
    training from scratch: it counters the foreground/background imbalance that BCE alone leaves).

    Returns: the loss and its parts as floats for logging.
    """
    sides = output.saliency
    if len(side_weights) != len(sides):
        raise ValueError(f"{len(side_weights)} side weights for {len(sides)} side outputs")
    total = target.new_zeros(())
    parts: dict[str, float] = {}
    bce_sum = target.new_zeros(())
    iou_sum = target.new_zeros(())
    for weight, logits in zip(side_weights, sides, strict=True):
        g = resize_target(target, logits.shape[-2:])
        logits = logits.float()
        bce_sum = bce_sum + weight * F.binary_cross_entropy_with_logits(logits, g)
        if iou_weight:
            iou_sum = iou_sum + weight * soft_iou_loss(logits, g)
    total = bce_sum + iou_weight * iou_sum
    parts["bce"] = float(bce_sum.detach())
    if iou_weight:
        parts["iou"] = float(iou_sum.detach())
    global_geometry = [g for g in geometry if g.kind == "global"]
    if ga_weight and global_geometry and "global" in output.attention:
        ga = global_attention_loss(output.attention["global"].float(), target, global_geometry[0])
        total = total + ga_weight * ga
        parts["ga"] = float(ga.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def build_loss(cfg, model):
    """The loss a config names, bound to the model's attention geometry: ``(output, target) -> (loss, parts)``."""
    if cfg.kind == "picanet":
        geometry = model.attention_geometry()
        params = dict(cfg.params)

        def loss(output: ModelOutput, target: Tensor) -> tuple[Tensor, dict[str, float]]:
            return picanet_loss(output, target, geometry, **params)

        return loss
    raise ValueError(f"unknown loss kind {cfg.kind!r}")
