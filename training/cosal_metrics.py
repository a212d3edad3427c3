"""Grouping metrics for within-image co-saliency on scenes with known instances (``training.cosal_data``).

- **Group found**: some predicted group has members matched to at least two instances of the true co-salient group
  and none matched to a distractor (box IoU ≥ 0.5, one-to-one greedy matching by IoU).
- **Group found exactly**: such a group whose every member is matched to a distinct true instance, so it lists each
  copy once (a group also holding a duplicate box of a copy, or a box on nothing, is found but not exactly).
- **Adjusted Rand index** (Hubert & Arabie, 1985) over the scene's true instances: the true partition puts the
  group's instances together and each distractor alone; the predicted partition gives each matched instance its
  predicted group (or its own cluster when it is a singleton) and each unmatched instance a cluster of its own.
  Computed from the pair-confusion matrix as scikit-learn does, so two single-cluster or all-singleton partitions
  that agree score 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.grouping import box_iou

MATCH_IOU = 0.5


def adjusted_rand_index(labels_true: np.ndarray, labels_pred: np.ndarray) -> float:
    """ARI of two labelings of the same items (1 = same partition, ~0 = chance, can be negative)."""
    labels_true = np.asarray(labels_true)
    labels_pred = np.asarray(labels_pred)
    if labels_true.shape != labels_pred.shape:
        raise ValueError(f"labelings differ in length: {labels_true.shape} vs {labels_pred.shape}")
    n = len(labels_true)
    _, true_ids = np.unique(labels_true, return_inverse=True)
    _, pred_ids = np.unique(labels_pred, return_inverse=True)
    contingency = np.zeros((true_ids.max(initial=-1) + 1, pred_ids.max(initial=-1) + 1), dtype=np.int64)
    np.add.at(contingency, (true_ids, pred_ids), 1)
    sum_squares = int((contingency**2).sum())
    row = contingency.sum(axis=1)
    col = contingency.sum(axis=0)
    together_both = sum_squares - n  # ordered pairs in the same cluster in both
    together_pred_only = int((col**2).sum()) - sum_squares
    together_true_only = int((row**2).sum()) - sum_squares
    apart_both = n * n - together_pred_only - together_true_only - sum_squares
    if together_pred_only == 0 and together_true_only == 0:
        return 1.0
    numerator = 2.0 * (together_both * apart_both - together_true_only * together_pred_only)
    denominator = (together_both + together_true_only) * (together_true_only + apart_both) + (
        together_both + together_pred_only
    ) * (together_pred_only + apart_both)
    return float(numerator / denominator)


def match_instances(true_boxes: np.ndarray, pred_boxes: np.ndarray, min_iou: float = MATCH_IOU) -> np.ndarray:
    """For each true box, the index of its predicted box (or -1): one-to-one, greedily by IoU, IoU ≥ ``min_iou``."""
    matched = np.full(len(true_boxes), -1, dtype=np.int64)
    if len(true_boxes) == 0 or len(pred_boxes) == 0:
        return matched
    iou = box_iou(np.asarray(true_boxes, np.float64), np.asarray(pred_boxes, np.float64))
    taken = np.zeros(len(pred_boxes), dtype=bool)
    for flat in np.argsort(-iou, axis=None, kind="stable"):
        t, p = np.unravel_index(flat, iou.shape)
        if iou[t, p] < min_iou:
            break
        if matched[t] < 0 and not taken[p]:
            matched[t], taken[p] = p, True
    return matched


@dataclass(frozen=True)
class SceneScore:
    group_found: bool
    group_exact: bool  # found, and every member of that group is a distinct true copy: no duplicate, no stray box
    ari: float
    matched_instances: int  # true instances a predicted one matches (box IoU >= MATCH_IOU, one-to-one)


def score_scene(
    true_boxes: np.ndarray,
    true_groups: np.ndarray,
    cosalient_group: int,
    pred_boxes: np.ndarray,
    pred_labels: np.ndarray,
) -> SceneScore:
    """Score one scene.

    Args:
        true_boxes: ``[T, 4]`` true instance boxes; ``true_groups``: ``[T]`` their group ids.
        cosalient_group: the group id of the co-salient group (the others are distractors).
        pred_boxes: ``[P, 4]`` predicted instance boxes (same pixels); ``pred_labels``: ``[P]`` predicted cluster ids,
            where a cluster of one member is a singleton.
    """
    matched = match_instances(true_boxes, pred_boxes)
    pred_labels = np.asarray(pred_labels)
    sizes = {label: int(np.count_nonzero(pred_labels == label)) for label in np.unique(pred_labels)}
    found = exact = False
    for label, size in sizes.items():
        if size < 2:
            continue
        members = {int(p) for p in np.flatnonzero(pred_labels == label)}
        hits = [t for t, p in enumerate(matched) if p in members]
        if sum(true_groups[t] == cosalient_group for t in hits) >= 2 and all(
            true_groups[t] == cosalient_group for t in hits
        ):
            found = True
            exact = exact or len(hits) == size
    fresh = int(pred_labels.max(initial=-1)) + 1
    predicted = []
    for p in matched:
        predicted.append(int(pred_labels[p]) if p >= 0 else fresh)
        fresh += p < 0
    return SceneScore(
        group_found=found,
        group_exact=exact,
        ari=adjusted_rand_index(np.asarray(true_groups), np.asarray(predicted)),
        matched_instances=int(np.count_nonzero(matched >= 0)),
    )
