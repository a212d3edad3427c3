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


def soft_iou_loss(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``1 - (Σ w·p·g + 1) / (Σ w·(p + g - p·g) + 1)`` per image, averaged over the batch (per-pixel weights ``w``)."""
    prob = torch.sigmoid(logits)
    inter = (weight * prob * target).sum(dim=(1, 2, 3))
    union = (weight * (prob + target - prob * target)).sum(dim=(1, 2, 3))
    return (1 - (inter + 1) / (union + 1)).mean()


BOUNDARY_WINDOW_FRACTION = 31 / 352  # F3Net's 31-pixel window on its 352-pixel maps


def boundary_pixel_weight(target: Tensor, boundary_weight: float) -> Tensor:
    """F3Net's pixel weight ``1 + λ·|avgpool(g) − g|``: pixels near object borders (where the local mean differs from
    the pixel) count up to ``1 + λ`` times; the window keeps F3Net's size relative to the map (31 px at 352)."""
    side = round(BOUNDARY_WINDOW_FRACTION * target.shape[-1]) // 2 * 2 + 1
    local_mean = F.avg_pool2d(target, side, stride=1, padding=side // 2, count_include_pad=False)
    return 1 + boundary_weight * (local_mean - target).abs()


def weighted_bce_with_logits(logits: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """``Σ w·BCE / Σ w`` per image, averaged over the batch (plain mean BCE when ``w`` is constant)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return ((weight * bce).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3))).mean()


def values_at_global_grid(x: Tensor, geometry: AttentionGeometry) -> Tensor:
    """``[B,C,K,K]``: a ``[B,C,H,W]`` map at the GAP map's size read at the K×K grid cells."""
    k, d, o = geometry.grid, geometry.dilation, geometry.offset
    span = (k - 1) * d + 1
    return x[:, :, o : o + span : d, o : o + span : d]


def global_attention_target(target: Tensor, geometry: AttentionGeometry, size: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Eq. (7): for each pixel of the GAP map, the normalized ground-truth attention over the grid cells.

    Background pixels should attend to the foreground cells and foreground pixels to the background cells.

    Returns:
        ``A [B,K*K,H,W]`` and a ``valid [B,1,H,W]`` mask: pixels whose opposite region has no grid cell are
        left out (eq. 7 is undefined there).
    """
    g = (resize_target(target, size) >= 0.5).float()
    k = geometry.grid
    cells = values_at_global_grid(g, geometry).reshape(g.shape[0], k * k, 1, 1)
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


def received_global_attention(alpha: Tensor, geometry: AttentionGeometry) -> Tensor:
    """``[B,1,K,K]``: the mean over every pixel of the GAP map of the weight it gives each grid cell (sums to 1)."""
    k = geometry.grid
    return alpha.mean(dim=(2, 3)).reshape(alpha.shape[0], 1, k, k)


def fixations_at_global_grid(fixation_map: Tensor, geometry: AttentionGeometry, size: Sequence[int]) -> Tensor:
    """``[B,1,K,K]``: the fixation map area-pooled to the GAP map's ``size`` and read at the grid cells, the same
    sampling eq. (7) applies to the ground truth."""
    return values_at_global_grid(F.adaptive_avg_pool2d(_at_least_float32(fixation_map), tuple(size)), geometry)


def picanet_loss(
    output: ModelOutput,
    target: Tensor,
    geometry: Sequence[AttentionGeometry],
    side_weights: Sequence[float] = PICANET_SIDE_WEIGHTS,
    ga_weight: float = PICANET_GA_WEIGHT,
    iou_weight: float = 0.0,
    boundary_weight: float = 0.0,
    fixation_map: Tensor | None = None,
    fixation_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Eq. (9): ``Σ γ^i L_S^i + γ_GA L_GA`` with pixel BCE (eq. 6) on every side output.

    ``iou_weight > 0`` adds a soft-IoU term to every side output, weighted by the same γ^i (a deviation for
    training from scratch: it counters the foreground/background imbalance that BCE alone leaves).

    ``boundary_weight > 0`` weights both terms per pixel by ``boundary_pixel_weight`` (F3Net's structure loss, not in
    PiCANet): errors near object borders, where soft, blurred maps cost MAE, count more.

    ``fixation_weight > 0`` with a ``fixation_map`` adds ``fixation_weight × KL(P_fix ‖ received)``: the human
    fixation density over the GAP grid cells against the attention each cell receives (the map ``outputs=attention``
    shows), as the human-vs-machine study supervises its attention maps (not in PiCANet; images without fixations
    are left out).

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
        pixel_weight = boundary_pixel_weight(g, boundary_weight) if boundary_weight else torch.ones_like(g)
        bce_sum = bce_sum + weight * weighted_bce_with_logits(logits, g, pixel_weight)
        if iou_weight:
            iou_sum = iou_sum + weight * soft_iou_loss(logits, g, pixel_weight)
    total = bce_sum + iou_weight * iou_sum
    parts["bce"] = float(bce_sum.detach())
    if iou_weight:
        parts["iou"] = float(iou_sum.detach())
    global_geometry = [g for g in geometry if g.kind == "global"]
    if ga_weight and global_geometry and "global" in output.attention:
        ga = global_attention_loss(output.attention["global"].float(), target, global_geometry[0])
        total = total + ga_weight * ga
        parts["ga"] = float(ga.detach())
    if fixation_weight and fixation_map is not None and global_geometry and "global" in output.attention:
        alpha = output.attention["global"].float()
        received = received_global_attention(alpha, global_geometry[0])
        fixations = fixations_at_global_grid(fixation_map, global_geometry[0], alpha.shape[-2:])
        gaze = fixation_kl_loss(received, fixations)
        total = total + fixation_weight * gaze
        parts["gaze_kl"] = float(gaze.detach())
    parts["loss"] = float(total.detach())
    return total, parts


CLASS_BETA2 = 0.3  # β² of the F-measure loss (the standard SOD setting)
CLASS_EPS = 1e-7  # ε of eq. (10)-(11)
CLASS_REGION_WINDOW = 11  # sliding-window size of the region loss; the paper's [38] uses SSIM's 11×11 window
ATTENTION_KL_WEIGHT = 0.01  # weight of the fixation KL term of the attention baselines (section IV-A)


def _at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 autocast outputs are promoted; float64 stays (exact hand-computation tests)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _upsample_logits(logits: Tensor, size: Sequence[int]) -> Tensor:
    """Logits at the ground truth's size, in at least float32."""
    logits = _at_least_float32(logits)
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def region_similarity_loss(prob: Tensor, target: Tensor, window: int = CLASS_REGION_WINDOW, stride: int = 1) -> Tensor:
    """Eq. (8)-(9): mean over sliding windows of ``(μ_S − μ_G)² + (σ_S − σ_G)²``.

    Windows are ``window``×``window`` with ``stride``, fully inside the map (no padding); σ is the population
    standard deviation of the window (a small constant keeps its gradient finite on flat windows).
    """
    window = min(window, prob.shape[-2], prob.shape[-1])

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = F.avg_pool2d(x, window, stride)
        var = (F.avg_pool2d(x * x, window, stride) - mean * mean).clamp_min(0)
        return mean, torch.sqrt(var + 1e-12)

    mean_s, std_s = stats(prob)
    mean_g, std_g = stats(target)
    return ((mean_s - mean_g) ** 2 + (std_s - std_g) ** 2).mean()


def f_measure_loss(prob: Tensor, target: Tensor, beta2: float = CLASS_BETA2, eps: float = CLASS_EPS) -> Tensor:
    """Eq. (10)-(13): ``1 − F_β`` with soft precision ``ΣSG/(ΣS+ε)`` and recall ``ΣSG/(ΣG+ε)`` per image.

    ε is also added to the F-measure's denominator, which eq. (12) leaves bare, so an image where the prediction
    misses the object entirely scores F = 0 instead of 0/0.
    """
    tp = (prob * target).sum(dim=(1, 2, 3))
    precision = tp / (prob.sum(dim=(1, 2, 3)) + eps)
    recall = tp / (target.sum(dim=(1, 2, 3)) + eps)
    f = (1 + beta2) * precision * recall / (beta2 * precision + recall + eps)
    return (1 - f).mean()


def class_loss(
    output: ModelOutput,
    target: Tensor,
    window: int = CLASS_REGION_WINDOW,
    beta2: float = CLASS_BETA2,
) -> tuple[Tensor, dict[str, float]]:
    """CLASS cross-level supervision, eq. (14)-(15): ``Σ_i 2^{-(i-1)} (L_pixel + L_region + L_object)``.

    Side output i = 1 is the finest (the last of ``output.saliency``), so coarser outputs weigh less. Each side
    output's logits are upsampled bilinearly to the ground truth's size before the losses, as the paper supervises
    every stage with the full-resolution ground truth.
    """
    parts = {"bce": 0.0, "region": 0.0, "object": 0.0}
    total = target.new_zeros(())
    for level, logits in enumerate(reversed(output.saliency), start=1):
        weight = 1.0 / 2 ** (level - 1)
        logits = _upsample_logits(logits, target.shape[-2:])
        prob = torch.sigmoid(logits)
        bce = F.binary_cross_entropy_with_logits(logits, target)
        region = region_similarity_loss(prob, target, window)
        obj = f_measure_loss(prob, target, beta2)
        total = total + weight * (bce + region + obj)
        for key, value in (("bce", bce), ("region", region), ("object", obj)):
            parts[key] += weight * float(value.detach())
    parts["loss"] = float(total.detach())
    return total, parts


def arn_loss(output: ModelOutput, target: Tensor, side_weights: Sequence[float] | None = None) -> tuple[Tensor, dict]:
    """ARN: pixel-wise binary cross-entropy of the final saliency map against the ground truth.

    ``side_weights`` (coarsest first, one per side output) optionally adds the same loss on every side output;
    the paper supervises the final map only, which is the default.
    """
    sides = list(output.saliency)
    weights = [0.0] * (len(sides) - 1) + [1.0] if side_weights is None else list(side_weights)
    if len(weights) != len(sides):
        raise ValueError(f"{len(weights)} side weights for {len(sides)} side outputs")
    total = target.new_zeros(())
    for weight, logits in zip(weights, sides, strict=True):
        if weight:
            logits = _upsample_logits(logits, target.shape[-2:])
            total = total + weight * F.binary_cross_entropy_with_logits(logits, target)
    return total, {"bce": float(total.detach()), "loss": float(total.detach())}


def fixation_kl_loss(attention: Tensor, fixation_map: Tensor) -> Tensor:
    """``KL(P_fix ‖ P_att)`` per image, both maps normalized to sum 1 over positions, at the attention's size.

    Images whose fixation map is all zero (no fixations recorded, e.g. ECSSD) are left out; the result is the
    mean over the others, or 0 when there are none.
    """
    fixations = F.adaptive_avg_pool2d(_at_least_float32(fixation_map), attention.shape[-2:])
    fix_sum = fixations.sum(dim=(1, 2, 3))
    has_fixations = fix_sum > 0
    if not bool(has_fixations.any()):
        return _at_least_float32(attention.new_zeros(()))
    q = fixations[has_fixations] / fix_sum[has_fixations].view(-1, 1, 1, 1)
    p = _at_least_float32(attention[has_fixations])
    p = p / p.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    kl = (torch.xlogy(q, q) - q * torch.log(p.clamp_min(1e-12))).sum(dim=(1, 2, 3))
    return kl.mean()


SHUFFLED_RANK_SIZE = 28  # the ranking loss compares every pair of cells of maps pooled to at most this side


def shuffled_rank_loss(attention: Tensor, fixation_map: Tensor) -> Tensor:
    """A pairwise-logistic surrogate of shuffled AUC (not in the paper): per image, the attention at its own
    fixations should exceed the attention at the fixations of the *other* images of the batch (the negatives
    shuffled AUC draws, which hold the centre bias), ``Σ_x Σ_y q_i(x) n_i(y) softplus(log a_i(y) − log a_i(x))``
    with ``q_i`` the image's fixation density and ``n_i`` the mean density of the batch's other images with
    fixations, both over cells of the maps pooled to at most :data:`SHUFFLED_RANK_SIZE` per side.

    Where KL to the fixation density rewards looking at the centre, as people do, this rewards only what sets the
    image's fixations apart from everyone's. It needs two images with fixations in the batch; with fewer it is 0.
    Starts at log 2 for a constant map.
    """
    size = tuple(min(side, SHUFFLED_RANK_SIZE) for side in attention.shape[-2:])
    fixations = F.adaptive_avg_pool2d(_at_least_float32(fixation_map), size).flatten(1)
    totals = fixations.sum(dim=1)
    has_fixations = totals > 0
    count = int(has_fixations.sum())
    if count < 2:
        return _at_least_float32(attention.new_zeros(()))
    own = fixations[has_fixations] / totals[has_fixations, None]
    others = (own.sum(dim=0, keepdim=True) - own) / (count - 1)
    log_attention = torch.log(
        F.adaptive_avg_pool2d(_at_least_float32(attention[has_fixations]), size).flatten(1).clamp_min(1e-12)
    )
    margin = log_attention[:, None, :] - log_attention[:, :, None]  # [n, x, y]: log a(y) − log a(x)
    return (own[:, :, None] * others[:, None, :] * F.softplus(margin)).sum(dim=(1, 2)).mean()


def attention_baseline_loss(
    output: ModelOutput,
    target: Tensor,
    fixation_map: Tensor | None = None,
    kl_weight: float = ATTENTION_KL_WEIGHT,
    rank_weight: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """Attention baselines (section IV-A): BCE on the three side outputs with equal weights, plus, for
    *Explicit Attention (Supervised)*, ``kl_weight`` × the mean KL of every ``spatial/*`` attention map to the
    human fixation density and ``rank_weight`` × their mean :func:`shuffled_rank_loss` (our addition).

    Side outputs are upsampled to the ground truth's size. Without a fixation map (or with both weights 0) this
    is the implicit-attention loss.
    """
    total = target.new_zeros(())
    for logits in output.saliency:
        total = total + F.binary_cross_entropy_with_logits(_upsample_logits(logits, target.shape[-2:]), target)
    parts = {"bce": float(total.detach())}
    maps = [v for k, v in sorted(output.attention.items()) if k.startswith("spatial/")]
    if fixation_map is not None and kl_weight and maps:
        kl = torch.stack([fixation_kl_loss(m, fixation_map) for m in maps]).mean()
        total = total + kl_weight * kl
        parts["kl"] = float(kl.detach())
    if fixation_map is not None and rank_weight and maps:
        rank = torch.stack([shuffled_rank_loss(m, fixation_map) for m in maps]).mean()
        total = total + rank_weight * rank
        parts["rank"] = float(rank.detach())
    parts["loss"] = float(total.detach())
    return total, parts


LOSS_KINDS = ("picanet", "class", "arn", "attention_baseline")


def build_loss(cfg, model):
    """The loss a config names, bound to the model: ``(output, target[, fixation_map]) -> (loss, parts)``.

    Kinds: ``picanet`` (needs the model's attention geometry), ``class``, ``arn``, ``attention_baseline``.
    """
    params = dict(cfg.params)
    if cfg.kind == "picanet":
        geometry = model.attention_geometry()

        def loss(
            output: ModelOutput, target: Tensor, fixation_map: Tensor | None = None
        ) -> tuple[Tensor, dict[str, float]]:
            return picanet_loss(output, target, geometry, fixation_map=fixation_map, **params)

        return loss
    if cfg.kind == "class":
        return lambda output, target: class_loss(output, target, **params)
    if cfg.kind == "arn":
        return lambda output, target: arn_loss(output, target, **params)
    if cfg.kind == "attention_baseline":
        return lambda output, target, fixation_map=None: attention_baseline_loss(output, target, fixation_map, **params)
    raise ValueError(f"unknown loss kind {cfg.kind!r} ({', '.join(LOSS_KINDS)})")
