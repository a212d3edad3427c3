"""Grouping metrics: ARI against scikit-learn, instance matching and group-found by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.cosal_metrics import adjusted_rand_index, match_instances, score_scene


@pytest.mark.parametrize(
    ("true", "pred"),
    [
        ([0, 0, 1, 2], [0, 0, 1, 2]),
        ([0, 0, 1, 2], [5, 5, 7, 9]),
        ([0, 0, 0, 1], [0, 0, 1, 1]),
        ([0, 0], [0, 1]),
        ([0, 0], [3, 3]),
        ([0, 1, 2], [0, 0, 0]),
        ([0, 0, 0, 0, 1, 2], [0, 1, 0, 2, 3, 3]),
    ],
)
def test_ari_agrees_with_scikit_learn(true: list[int], pred: list[int]) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    assert adjusted_rand_index(np.asarray(true), np.asarray(pred)) == pytest.approx(
        metrics.adjusted_rand_score(true, pred)
    )


def test_matching_is_one_to_one_by_iou() -> None:
    true = np.asarray([[0, 0, 10, 10], [20, 0, 30, 10], [50, 50, 60, 60]])
    pred = np.asarray([[1, 0, 11, 10], [0, 0, 10, 10], [21, 0, 30, 10]])
    assert match_instances(true, pred).tolist() == [1, 2, -1]  # the exact box wins; nothing near the third


TRUE_BOXES = np.asarray([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]], np.float64)
TRUE_GROUPS = np.asarray([0, 0, 0, 1])  # three copies and a distractor


def test_the_true_group_is_found_with_two_members_and_no_distractor() -> None:
    score = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, TRUE_BOXES.copy(), np.asarray([0, 0, 0, 1]))
    assert score.group_found and score.ari == 1.0
    partial = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, TRUE_BOXES[:2].copy(), np.asarray([0, 0]))
    assert partial.group_found and partial.ari < 1.0  # the third copy was missed
    assert score.matched_instances == 4 and partial.matched_instances == 2
    assert score.group_exact and partial.group_exact


def test_a_group_with_a_duplicate_box_is_found_but_not_exactly() -> None:
    shifted = TRUE_BOXES[:1] + np.asarray([[4.0, 0.0, 4.0, 0.0]])  # IoU 6/14 with the first copy: no match
    boxes = np.concatenate([TRUE_BOXES, shifted])
    score = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, boxes, np.asarray([0, 0, 0, 1, 0]))
    assert score.group_found and not score.group_exact and score.ari == 1.0


def test_a_group_holding_the_distractor_or_a_single_copy_is_not_found() -> None:
    with_distractor = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, TRUE_BOXES.copy(), np.asarray([0, 0, 0, 0]))
    assert not with_distractor.group_found
    one_copy = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, TRUE_BOXES[[0, 3]].copy(), np.asarray([0, 0]))
    assert not one_copy.group_found
    nothing = score_scene(TRUE_BOXES, TRUE_GROUPS, 0, np.zeros((0, 4)), np.zeros(0, np.int64))
    assert not nothing.group_found and nothing.ari == 0.0 and nothing.matched_instances == 0
