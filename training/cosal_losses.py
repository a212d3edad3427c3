"""Within-image co-saliency losses (within_image_cosaliency.txt): RPN (eq. 7–8) and weighted triplet
(eq. 9–10) terms of ``L_total = α L_decoder + β L_RPN + γ L_RFM`` (eq. 5, α = β = γ = 1).

Eq. (7)–(8) are SSD's MultiBox loss written for one "salient object" class: anchors matched to ground-truth
boxes (each box's best anchor, plus every anchor with IoU > 0.5), binary confidence loss, Smooth-L1 on the
offsets of eq. (8) for positives, everything divided by the number of matched anchors N. The paper does not say
which negatives enter the confidence term; we follow SSD, its source, and keep the hardest ones at 3 per positive
(``confidence="hard_negatives"``). That RPN ranked its boxes poorly here (median objectness 0.17 for boxes that hit an
instance, 0.07 for loose ones, on validation scenes), so ``confidence="focal"`` offers RetinaNet's alternative (a
deviation from the paper): every anchor enters the confidence term through the focal loss (α = 0.25, γ = 2), anchors
whose best IoU lies in [0.4, 0.5) are ignored, and the sum is divided by N as before. The focal RPN still scored a
box that spans two touching objects, or sits shifted on one, about as high as the box on an object (objectness median
0.45 for the best box on a copy, on validation scenes), and grouping picks boxes by that score; so
``confidence="quality_focal"`` (also a deviation) trains the objectness to *be* the box's quality: the Quality Focal
Loss of Generalized Focal Loss (Li et al., NeurIPS 2020), ``−|y − σ|^β ((1 − y) log(1 − σ) + y log σ)`` with β = 2,
whose target ``y`` is the IoU of the anchor's predicted box with its matched ground-truth box on positive anchors
and 0 on negatives (same anchors, ignore band and normalizer as ``focal``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from models.cosal import decode_boxes, encode_boxes

RPN_POSITIVE_IOU = 0.5
RPN_NEGATIVES_PER_POSITIVE = 3
FOCAL_ALPHA = 0.25  # RetinaNet's weights of positives (1 - α for negatives) and focusing exponent
FOCAL_GAMMA = 2.0
FOCAL_IGNORE_IOU = 0.4  # RetinaNet: anchors between this and the positive IoU are neither positive nor negative
QUALITY_FOCAL_BETA = 2.0  # GFL's exponent on |IoU target − objectness|
OBJECTNESS_PRIOR = 0.01  # RetinaNet starts every anchor at this probability, so the focal sum starts small
TRIPLET_MARGIN = 0.2  # FaceNet's margin for unit-length embeddings (the paper does not give its value)


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Jaccard overlap ``[N, M]`` of ``(x1, y1, x2, y2)`` boxes ``[N,4]`` and ``[M,4]``."""
    area_a = (boxes_a[:, 2] - boxes_a[:, 0]).clamp(min=0) * (boxes_a[:, 3] - boxes_a[:, 1]).clamp(min=0)
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]).clamp(min=0) * (boxes_b[:, 3] - boxes_b[:, 1]).clamp(min=0)
    top_left = torch.maximum(boxes_a[:, None, :2], boxes_b[None, :, :2])
    bottom_right = torch.minimum(boxes_a[:, None, 2:], boxes_b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def match_anchors(
    anchors: Tensor, gt_boxes: Tensor, positive_iou: float = RPN_POSITIVE_IOU
) -> tuple[Tensor, Tensor, Tensor]:
    """Label anchors as the paper does: each ground-truth box's best anchor, and every anchor whose IoU with some
    box exceeds ``positive_iou``, is positive; all others are negative.

    Args:
        anchors: ``[N,4]`` anchor boxes.
        gt_boxes: ``[G,4]`` ground-truth boxes (``G`` may be 0).
        positive_iou: the IoU above which an anchor is positive.

    Returns:
        ``labels [N]`` (1.0 positive, 0.0 negative), ``matched [N]``: the index of each anchor's box (meaningful
        only for positives; a box's best anchor is matched to that box) and ``best_iou [N]``: each anchor's largest
        IoU with any box.
    """
    num_anchors = anchors.shape[0]
    if gt_boxes.shape[0] == 0:
        zeros = anchors.new_zeros(num_anchors)
        return zeros, torch.zeros(num_anchors, dtype=torch.long, device=anchors.device), zeros
    iou = box_iou(anchors, gt_boxes)
    best_iou, matched = iou.max(dim=1)
    labels = (best_iou > positive_iou).to(anchors.dtype)
    anchor_iou, best_anchor = iou.max(dim=0)
    # A box that overlaps no anchor at all has no best anchor (argmax would pick anchor 0 and steal it).
    overlapping = anchor_iou > 0
    best_anchor = best_anchor[overlapping]
    labels[best_anchor] = 1.0
    matched[best_anchor] = torch.arange(gt_boxes.shape[0], device=anchors.device)[overlapping]
    return labels, matched, best_iou


def focal_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """RetinaNet's ``−α_t (1 − p_t)^γ log p_t`` per element (α = :data:`FOCAL_ALPHA`, γ = :data:`FOCAL_GAMMA`)."""
    probability = torch.sigmoid(logits)
    bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    p_t = probability * labels + (1 - probability) * (1 - labels)
    alpha_t = FOCAL_ALPHA * labels + (1 - FOCAL_ALPHA) * (1 - labels)
    return alpha_t * (1 - p_t).pow(FOCAL_GAMMA) * bce


def quality_focal_loss(logits: Tensor, quality: Tensor) -> Tensor:
    """GFL's Quality Focal Loss ``−|y − σ|^β ((1 − y) log(1 − σ) + y log σ)`` per element, ``y`` = ``quality`` in
    [0, 1] (β = :data:`QUALITY_FOCAL_BETA`)."""
    bce = F.binary_cross_entropy_with_logits(logits, quality, reduction="none")
    return (quality - torch.sigmoid(logits)).abs().pow(QUALITY_FOCAL_BETA) * bce


def rpn_loss(
    objectness: Tensor,
    deltas: Tensor,
    anchors: Tensor,
    gt_boxes: Sequence[Tensor],
    positive_iou: float = RPN_POSITIVE_IOU,
    negatives_per_positive: int = RPN_NEGATIVES_PER_POSITIVE,
    loc_weight: float = 1.0,
    confidence: str = "hard_negatives",
) -> tuple[Tensor, dict[str, float]]:
    """Eq. (7): ``(L_conf + α L_loc) / N`` over the batch, N = number of positive anchors (at least 1).

    Args:
        objectness: ``[B, N]`` logits, flattened in anchor order (``models.cosal.flatten_rpn_outputs``).
        deltas: ``[B, N, 4]`` predicted offsets.
        anchors: ``[N, 4]`` anchors (``CoSaliencyNet.anchors``).
        gt_boxes: per image, ``[G_b, 4]`` boxes in input pixels.
        positive_iou: matching threshold.
        negatives_per_positive: hard negatives kept per positive in the confidence term (per image; an image
            without boxes keeps this many).
        loc_weight: α (1 in the paper).
        confidence: ``hard_negatives`` (SSD's BCE on positives and the hardest negatives, the paper), ``focal``
            (RetinaNet's focal loss on every anchor but the ignored ones; ``negatives_per_positive`` is unused) or
            ``quality_focal`` (GFL's quality focal loss on the same anchors, target: the IoU of each positive's
            predicted box with its box, computed without gradient).

    Returns:
        The loss and its parts (``conf``, ``loc``, ``positives``) as floats for logging.
    """
    conf_total = objectness.new_zeros(())
    loc_total = objectness.new_zeros(())
    num_positive = 0
    for scores, offsets, boxes in zip(objectness, deltas, gt_boxes, strict=True):
        labels, matched, best_iou = match_anchors(anchors, boxes.to(anchors.dtype), positive_iou)
        positive = labels > 0
        count = int(positive.sum())
        if confidence == "focal":
            trained = positive | (best_iou < FOCAL_IGNORE_IOU)
            conf_total = conf_total + focal_loss(scores[trained], labels[trained]).sum()
        elif confidence == "quality_focal":
            trained = positive | (best_iou < FOCAL_IGNORE_IOU)
            quality = torch.zeros_like(labels)
            if count:
                with torch.no_grad():
                    predicted = decode_boxes(offsets[positive].detach().to(anchors.dtype), anchors[positive])
                    truth = boxes.to(anchors.dtype)[matched[positive]]
                    quality[positive] = box_iou(predicted, truth).diagonal().to(quality.dtype)
            conf_total = conf_total + quality_focal_loss(scores[trained], quality[trained]).sum()
        elif confidence == "hard_negatives":
            bce = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
            # Hard negative mining: the negatives the model is most wrong about.
            negative_loss = bce.detach().masked_fill(positive, float("-inf"))
            num_negative = min(negatives_per_positive * max(count, 1), int((~positive).sum()))
            hard = negative_loss.topk(num_negative).indices
            conf_total = conf_total + bce[positive].sum() + bce[hard].sum()
        else:
            raise ValueError(f"confidence must be hard_negatives, focal or quality_focal, not {confidence!r}")
        if count:
            targets = encode_boxes(boxes.to(anchors.dtype)[matched[positive]], anchors[positive])
            loc_total = loc_total + F.smooth_l1_loss(offsets[positive], targets, beta=1.0, reduction="sum")
        num_positive += count
    normalizer = max(num_positive, 1)
    loss = (conf_total + loc_weight * loc_total) / normalizer
    parts = {
        "conf": float(conf_total.detach()) / normalizer,
        "loc": float(loc_total.detach()) / normalizer,
        "positives": float(num_positive),
    }
    return loss, parts


def triplet_weights(anchor_iou: Tensor, positive_iou: Tensor) -> Tensor:
    """Eq. (9): ``β_i = IoU(anchor, gt) × IoU(positive, gt)`` for each triplet."""
    return anchor_iou * positive_iou


def weighted_triplet_loss(
    anchor: Tensor, positive: Tensor, negative: Tensor, weights: Tensor, margin: float = TRIPLET_MARGIN
) -> Tensor:
    """Eq. (10) weighted by eq. (9): ``mean_i β_i · max(d(a_i,p_i) − d(a_i,n_i) + margin, 0)``.

    ``d`` is the squared Euclidean distance of eq. (4). The paper sums the weighted terms; we average them so
    the loss does not grow with the number of triplets per image.

    Args:
        anchor, positive, negative: ``[K, D]`` region vectors.
        weights: ``[K]`` β_i.
        margin: the enforced gap between positive and negative distances.
    """
    d_pos = (anchor - positive).pow(2).sum(dim=1)
    d_neg = (anchor - negative).pow(2).sum(dim=1)
    return (weights * (d_pos - d_neg + margin).clamp(min=0)).mean()


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first."""
    order = scores.argsort(descending=True)
    keep: list[int] = []
    while order.numel():
        best = int(order[0])
        keep.append(best)
        if order.numel() == 1:
            break
        overlap = box_iou(boxes[best][None], boxes[order[1:]])[0]
        order = order[1:][overlap <= iou_threshold]
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def semi_hard_triplets(
    embeddings: Tensor, instance: Tensor, kind: Tensor, iou: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Online semi-hard triplets among region vectors (FaceNet's mining on the paper's proposals).

    Every pair of regions of the same kind on *different* instances (two copies of one object) is an anchor and a
    positive; the negative is the nearest region of another kind (a distractor, or an object of another scene)
    that lies farther from the anchor than the positive, or, when none does, the farthest one (the rule of
    TensorFlow Addons' ``triplet_semihard_loss``). Each triplet is weighted by eq. (9),
    ``β = IoU(a, its box) × IoU(p, its box)``.

    Batch-hard mining (farthest positive, nearest negative) was tried first and collapsed every vector onto one
    point within the first epoch (the loss sat at ``mean β × margin``; the run's log is in docs/results), the
    failure FaceNet reports for the hardest negatives early in training.

    Args:
        embeddings: ``[K, D]`` region vectors.
        instance: ``[K]`` id of the ground-truth instance each region covers (unique across the batch).
        kind: ``[K]`` id of that instance's object (copies of one object share it; unique across scenes).
        iou: ``[K]`` IoU of each region with its instance's box.

    Returns:
        Indices ``anchor, positive, negative`` ``[T]`` and weights ``β`` ``[T]`` (``T`` may be 0).
    """
    distance = torch.cdist(embeddings, embeddings).pow(2).detach()
    same_kind = kind[:, None] == kind[None, :]
    negative_mask = ~same_kind
    anchors, positives = (same_kind & (instance[:, None] != instance[None, :])).nonzero(as_tuple=True)
    has_negative = negative_mask[anchors].any(dim=1)
    anchors, positives = anchors[has_negative], positives[has_negative]
    to_negatives = distance[anchors]  # [T, K]
    negative = negative_mask[anchors]
    farther = negative & (to_negatives > distance[anchors, positives][:, None])
    semi_hard = to_negatives.masked_fill(~farther, float("inf")).argmin(dim=1)
    farthest = to_negatives.masked_fill(~negative, float("-inf")).argmax(dim=1)
    negatives = torch.where(farther.any(dim=1), semi_hard, farthest)
    return anchors, positives, negatives, triplet_weights(iou[anchors], iou[positives])
