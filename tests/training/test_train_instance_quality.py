"""The instance quality head's training pieces by hand: the validation AUC and the head's shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.cosal import InstanceQualityHead
from training.train_instance_quality import ranking_auc


def test_ranking_auc_counts_pairs_and_halves_ties() -> None:
    positive = np.asarray([False, True, False, True])
    assert ranking_auc(np.asarray([0.1, 0.4, 0.35, 0.8]), positive) == 1.0
    assert ranking_auc(np.asarray([0.9, 0.4, 0.35, 0.8]), positive) == 0.5  # 2 of the 4 pairs ordered right
    assert ranking_auc(np.asarray([0.5, 0.5, 0.5, 0.5]), positive) == 0.5
    assert ranking_auc(np.asarray([0.2, 0.6, 0.4]), np.asarray([True, False, False])) == 0.0
    assert np.isnan(ranking_auc(np.asarray([0.2, 0.6]), np.asarray([True, True])))


@pytest.mark.parametrize("size", [10, 7])
def test_the_head_scores_each_candidate_once(size: int) -> None:
    head = InstanceQualityHead(channels=5, hidden=8, size=size)
    logits = head(torch.zeros(3, 7, size, size))
    assert logits.shape == (3,)
    assert torch.allclose(logits, logits[:1].expand(3))  # same input, same score
