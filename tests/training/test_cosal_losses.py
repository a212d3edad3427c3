"""Co-saliency losses (eq. 7–10) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from models.cosal import encode_boxes
from training.cosal_losses import box_iou, match_anchors, rpn_loss, triplet_weights, weighted_triplet_loss


def _bce(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 4.0, 4.0]])
    b = torch.tensor([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    expected = torch.tensor([[1 / 7, 1.0, 0.0], [4 / 16, 4 / 16, 0.0]])
    torch.testing.assert_close(box_iou(a, b), expected)


ANCHORS = torch.tensor(
    [
        [0.0, 0.0, 10.0, 10.0],  # IoU 1 with the box
        [0.0, 0.0, 10.0, 20.0],  # IoU exactly 0.5: not above the threshold
        [50.0, 50.0, 60.0, 60.0],  # far away
        [0.0, 0.0, 9.0, 10.0],  # IoU 0.9
        [40.0, 40.0, 70.0, 70.0],  # IoU 100/900 with the second box
    ]
)


def test_match_anchors_threshold_and_best_anchor() -> None:
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [45.0, 45.0, 55.0, 55.0]])
    labels, matched, best_iou = match_anchors(ANCHORS, gt)
    # The second box overlaps anchor 2 (IoU 25/175) and anchor 4 (100/900): below 0.5, but anchor 2 is its best.
    torch.testing.assert_close(labels, torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0]))
    assert matched[0] == 0 and matched[3] == 0 and matched[2] == 1
    torch.testing.assert_close(best_iou, box_iou(ANCHORS, gt).max(dim=1).values)


def test_box_overlapping_nothing_steals_no_anchor() -> None:
    labels, _, _ = match_anchors(ANCHORS, torch.tensor([[200.0, 200.0, 210.0, 210.0]]))
    assert labels.sum() == 0
    labels, _, _ = match_anchors(ANCHORS, torch.zeros(0, 4))
    assert labels.sum() == 0


def test_rpn_loss_by_hand() -> None:
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5, 3.0]], requires_grad=True)
    target3 = [0.5 / 9, 0.0, math.log(10 / 9), 0.0]  # anchor 3: centre (4.5, 5), size 9×10 → box (5, 5), 10×10
    deltas = torch.tensor(
        [
            [
                [0.1, 0.0, 0.0, 0.0],
                [9.0, 9.0, 9.0, 9.0],
                [9.0, 9.0, 9.0, 9.0],
                [target3[0] + 2, 0.0, target3[2] + 0.5, 0.0],
                [9.0] * 4,
            ]
        ],
        requires_grad=True,
    )
    loss, parts = rpn_loss(logits, deltas, ANCHORS, gt, negatives_per_positive=1)
    # Positives: anchors 0 and 3 (N = 2). Negatives 1, 2, 4; keep the 2 hardest (largest BCE): logits 3.0 and 1.5.
    conf = _bce(2.0, 1) + _bce(0.5, 1) + _bce(3.0, 0) + _bce(1.5, 0)
    loc = 0.5 * 0.1**2 + (2 - 0.5) + 0.5 * 0.5**2  # Smooth-L1 (β = 1) of the offset errors
    assert math.isclose(loss.item(), (conf + loc) / 2, rel_tol=1e-6)
    assert math.isclose(parts["conf"], conf / 2, rel_tol=1e-6) and parts["positives"] == 2
    loss.backward()
    assert logits.grad[0, 2] == 0  # the easy negative is not in the loss
    assert deltas.grad[0, [1, 2, 4]].abs().sum() == 0  # offsets of negatives are not regressed
    torch.testing.assert_close(encode_boxes(gt[0], ANCHORS[3:4]), torch.tensor([target3]))


def test_rpn_loss_without_boxes_keeps_hard_negatives_only() -> None:
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5, 3.0]])
    loss, parts = rpn_loss(logits, torch.zeros(1, 5, 4), ANCHORS, [torch.zeros(0, 4)], negatives_per_positive=2)
    assert parts["positives"] == 0 and parts["loc"] == 0
    assert math.isclose(loss.item(), _bce(3.0, 0) + _bce(2.0, 0), rel_tol=1e-6)


def _focal(logit: float, label: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    p_t, alpha_t = (p, 0.25) if label else (1 - p, 0.75)
    return alpha_t * (1 - p_t) ** 2 * _bce(logit, label)


def test_focal_rpn_loss_by_hand_ignores_the_middle_band() -> None:
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5, 3.0]], requires_grad=True)
    loss, parts = rpn_loss(logits, torch.zeros(1, 5, 4), ANCHORS, gt, confidence="focal")
    # Positives 0 and 3; anchor 1 (IoU exactly 0.5) lies in [0.4, 0.5): ignored; every other anchor is a negative.
    conf = _focal(2.0, 1) + _focal(0.5, 1) + _focal(-1.0, 0) + _focal(3.0, 0)
    assert math.isclose(parts["conf"], conf / 2, rel_tol=1e-6) and parts["positives"] == 2
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 2] != 0  # ignored vs easy negative, which still counts
    with pytest.raises(ValueError, match="confidence"):
        rpn_loss(logits, torch.zeros(1, 5, 4), ANCHORS, gt, confidence="softmax")


def _quality_focal(logit: float, quality: float) -> float:
    p = 1 / (1 + math.exp(-logit))
    return abs(quality - p) ** 2 * _bce(logit, quality)


def test_quality_focal_rpn_loss_targets_the_predicted_boxes_iou() -> None:
    gt = [torch.tensor([[0.0, 0.0, 10.0, 10.0]])]
    logits = torch.tensor([[2.0, 1.5, -1.0, 0.5, 3.0]])
    deltas = torch.zeros(1, 5, 4)
    # Anchor 0 predicts the box shifted 2 px right: IoU 80 / 120 with the box; anchor 3 predicts itself: IoU 0.9.
    deltas[0, 0] = encode_boxes(torch.tensor([2.0, 0.0, 12.0, 10.0]), ANCHORS[0])
    _, parts = rpn_loss(logits, deltas, ANCHORS, gt, confidence="quality_focal")
    # Positives 0 and 3 (targets 2/3 and 0.9); anchor 1 in the ignored band; anchors 2 and 4 negatives (target 0).
    conf = _quality_focal(2.0, 2 / 3) + _quality_focal(0.5, 0.9) + _quality_focal(-1.0, 0) + _quality_focal(3.0, 0)
    assert math.isclose(parts["conf"], conf / 2, rel_tol=1e-5) and parts["positives"] == 2
    # Objectness equal to the quality (anchors predicting themselves: targets 1 and 0.9) costs nothing.
    exact = torch.tensor([[20.0, 0.0, -20.0, math.log(9.0), -20.0]])
    _, parts = rpn_loss(exact, torch.zeros(1, 5, 4), ANCHORS, gt, confidence="quality_focal")
    assert parts["conf"] < 1e-6


def test_weighted_triplet_loss_by_hand() -> None:
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0]])
    negative = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # d(a,p) = 0.16 + 0.64 = 0.8, d(a,n) = 2 → max(0.8 - 2 + 0.2, 0) = 0; easy.
    # second: d(a,p) = 0, d(a,n) = 2 → 0; third: 0 - 0 + 0.2 = 0.2 (the negative equals the anchor).
    weights = triplet_weights(torch.tensor([0.9, 0.5, 0.8]), torch.tensor([0.7, 0.5, 0.6]))
    torch.testing.assert_close(weights, torch.tensor([0.63, 0.25, 0.48]))
    loss = weighted_triplet_loss(anchor, positive, negative, weights, margin=0.2)
    assert math.isclose(loss.item(), 0.48 * 0.2 / 3, rel_tol=1e-6)
    hard = weighted_triplet_loss(anchor[:1], negative[:1], positive[:1], torch.ones(1), margin=0.5)
    assert math.isclose(hard.item(), 2 - 0.8 + 0.5, rel_tol=1e-6)  # positive and negative swapped


@pytest.mark.parametrize("margin", [0.0, 0.3])
def test_triplet_loss_pushes_negative_away(margin: float) -> None:
    anchor = torch.tensor([[1.0, 0.0]])
    negative = torch.tensor([[0.9, 0.1]], requires_grad=True)
    loss = weighted_triplet_loss(anchor, torch.tensor([[0.0, 1.0]]), negative, torch.ones(1), margin)
    loss.backward()
    # d(a,n) enters with a minus sign: the gradient on n points towards the anchor (descent moves n away).
    torch.testing.assert_close(negative.grad, 2 * (anchor - negative.detach()))
