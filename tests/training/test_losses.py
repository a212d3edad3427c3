"""Every training loss against a computation by hand (numpy loops over the papers' equations)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.outputs import AttentionGeometry, ModelOutput
from training.config import LossConfig
from training.losses import (
    arn_loss,
    attention_baseline_loss,
    build_loss,
    class_loss,
    f_measure_loss,
    global_attention_loss,
    picanet_loss,
    region_similarity_loss,
    shuffled_rank_loss,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def _bce(logits: np.ndarray, target: np.ndarray) -> float:
    p = _sigmoid(logits)
    return float(np.mean(-(target * np.log(p) + (1 - target) * np.log(1 - p))))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64).reshape(1, 1, *a.shape)


TARGET = np.zeros((4, 4))
TARGET[:2, :2] = 1  # foreground: the top-left 2×2 block


def test_global_attention_loss_hand_case() -> None:
    # 2×2 GAP map, K = 2, dilation 1, offset 0: the grid is the whole map. Ground truth pooled to 2×2 is
    # [[1,0],[0,0]], so the cells are (1,0,0,0): the foreground pixel (0,0) should attend to the three background
    # cells (1/3 each), the three background pixels to the one foreground cell.
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(4, 2, 2))
    alpha = np.exp(raw) / np.exp(raw).sum(axis=0, keepdims=True)
    expected = 0.0
    for y in range(2):
        for x in range(2):
            a = alpha[:, y, x]
            if (y, x) == (0, 0):
                expected += sum(1 / 3 * (math.log(1 / 3) - math.log(a[j])) for j in (1, 2, 3))
            else:
                expected += -math.log(a[0])
    expected /= 4
    geometry = AttentionGeometry("global", "global", grid=2, dilation=1, stride=8)
    loss = global_attention_loss(torch.tensor(alpha[None]), _t(TARGET), geometry)
    assert float(loss) == pytest.approx(expected, rel=1e-6)  # the target attention is built in float32


def test_picanet_loss_hand_case() -> None:
    rng = np.random.default_rng(1)
    coarse, fine = rng.normal(size=(2, 2)), rng.normal(size=(4, 4))
    raw = rng.normal(size=(4, 2, 2))
    alpha = np.exp(raw) / np.exp(raw).sum(axis=0, keepdims=True)
    coarse_target = np.array([[1.0, 0.0], [0.0, 0.0]])  # 4×4 target area-averaged to 2×2
    bce = 0.5 * _bce(coarse, coarse_target) + 1.0 * _bce(fine, TARGET)
    ga = sum(1 / 3 * (math.log(1 / 3) - math.log(alpha[j, 0, 0])) for j in (1, 2, 3))
    ga += -math.log(alpha[0, 0, 1]) - math.log(alpha[0, 1, 0]) - math.log(alpha[0, 1, 1])
    ga /= 4
    output = ModelOutput(saliency=[_t(coarse), _t(fine)], attention={"global": torch.tensor(alpha[None])})
    geometry = [AttentionGeometry("global", "global", grid=2, dilation=1, stride=8)]
    loss, parts = picanet_loss(output, _t(TARGET), geometry, side_weights=(0.5, 1.0), ga_weight=0.2)
    assert float(loss) == pytest.approx(bce + 0.2 * ga, rel=1e-6)
    assert parts["bce"] == pytest.approx(bce, rel=1e-6) and parts["ga"] == pytest.approx(ga, rel=1e-6)
    with pytest.raises(ValueError, match="side weights"):
        picanet_loss(output, _t(TARGET), geometry, side_weights=(1.0,))


def test_picanet_boundary_weighted_terms_hand_case() -> None:
    # A 23×23 map: F3Net's window scaled to it is round(31/352 · 23) = 2 → 3×3 (odd), means over the pixels inside
    # the map. w = 1 + 5·|local mean − g| weights the BCE (Σ w·bce / Σ w) and the IoU (Σ w·p·g, Σ w·(p + g − p·g)).
    rng = np.random.default_rng(3)
    size = 23
    logits = rng.normal(size=(size, size))
    target = np.zeros((size, size))
    target[4:15, 6:20] = 1
    weight = np.empty_like(target)
    for y in range(size):
        for x in range(size):
            window = target[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
            weight[y, x] = 1 + 5 * abs(window.mean() - target[y, x])
    assert weight.max() > 1 and weight.min() == 1  # border pixels weigh more, the interior and far background 1
    p = _sigmoid(logits)
    bce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    expected_bce = float((weight * bce).sum() / weight.sum())
    inter, union = (weight * p * target).sum(), (weight * (p + target - p * target)).sum()
    expected_iou = float(1 - (inter + 1) / (union + 1))
    output = ModelOutput(saliency=[_t(logits)], attention={})
    _, parts = picanet_loss(
        output, _t(target), [], side_weights=(1.0,), ga_weight=0.0, iou_weight=1.0, boundary_weight=5.0
    )
    assert parts["bce"] == pytest.approx(expected_bce, rel=1e-6)
    assert parts["iou"] == pytest.approx(expected_iou, rel=1e-6)
    _, plain = picanet_loss(output, _t(target), [], side_weights=(1.0,), ga_weight=0.0, iou_weight=1.0)
    assert plain["bce"] == pytest.approx(float(bce.mean()), rel=1e-6) != parts["bce"]


def test_picanet_fixation_term_hand_case() -> None:
    # GAP map 4×4, K = 2, dilation 2, offset 0: the cells are pixels (0,0), (0,2), (2,0), (2,2). Fixation counts
    # on an 8×8 image pool (2×2 areas) to the 4×4 map; read at the cells they are (2/4, 0, 1/4, 1/4) → q = (1/2, 0,
    # 1/4, 1/4). The attention each cell receives is the mean of alpha over the 16 pixels.
    rng = np.random.default_rng(6)
    raw = rng.normal(size=(4, 4, 4))
    alpha = np.exp(raw) / np.exp(raw).sum(axis=0, keepdims=True)
    received = alpha.reshape(4, -1).mean(axis=1)
    fixations = np.zeros((8, 8))
    fixations[0, 1], fixations[1, 0], fixations[4, 0], fixations[5, 5] = 1.0, 1.0, 1.0, 1.0
    fixations[7, 7] = 5.0  # pools to map pixel (3,3), which no cell reads
    q = np.array([0.5, 0.0, 0.25, 0.25])
    gaze = sum(q[j] * (math.log(q[j]) - math.log(received[j])) for j in range(4) if q[j] > 0)
    sides = [_t(np.zeros((8, 8)))]
    output = ModelOutput(saliency=sides, attention={"global": torch.tensor(alpha[None])})
    geometry = [AttentionGeometry("global", "global", grid=2, dilation=2, stride=8)]
    target = _t(np.zeros((8, 8)))
    base, parts = picanet_loss(output, target, geometry, side_weights=(1.0,), ga_weight=0.0)
    assert "gaze_kl" not in parts  # off unless weighted and given fixations
    loss, parts = picanet_loss(
        output, target, geometry, side_weights=(1.0,), ga_weight=0.0, fixation_map=_t(fixations), fixation_weight=0.5
    )
    assert parts["gaze_kl"] == pytest.approx(gaze, rel=1e-6)
    assert float(loss) == pytest.approx(float(base) + 0.5 * gaze, rel=1e-6)
    _, parts = picanet_loss(
        output, target, geometry, side_weights=(1.0,), fixation_map=_t(np.zeros((8, 8))), fixation_weight=0.5
    )
    assert parts["gaze_kl"] == 0.0  # an image without fixations adds nothing


def _region_by_hand(prob: np.ndarray, target: np.ndarray, window: int) -> float:
    values = []
    for y in range(prob.shape[0] - window + 1):
        for x in range(prob.shape[1] - window + 1):
            s, g = prob[y : y + window, x : x + window], target[y : y + window, x : x + window]
            values.append((s.mean() - g.mean()) ** 2 + (s.std() - g.std()) ** 2)
    return float(np.mean(values))


def _f_loss_by_hand(prob: np.ndarray, target: np.ndarray, beta2: float = 0.3, eps: float = 1e-7) -> float:
    tp = (prob * target).sum()
    precision, recall = tp / (prob.sum() + eps), tp / (target.sum() + eps)
    return float(1 - (1 + beta2) * precision * recall / (beta2 * precision + recall + eps))


def test_region_and_f_measure_losses_hand_case() -> None:
    prob = _sigmoid(np.random.default_rng(2).normal(size=(4, 4)))
    assert float(region_similarity_loss(_t(prob), _t(TARGET), window=2)) == pytest.approx(
        _region_by_hand(prob, TARGET, 2),
        abs=1e-5,  # σ = sqrt(var + 1e-12) moves flat windows' σ by 1e-6
    )
    assert float(f_measure_loss(_t(prob), _t(TARGET))) == pytest.approx(_f_loss_by_hand(prob, TARGET), rel=1e-9)
    # a perfect prediction: no region distance, F = 1
    assert float(region_similarity_loss(_t(TARGET), _t(TARGET), window=2)) == pytest.approx(0.0, abs=1e-9)
    assert float(f_measure_loss(_t(TARGET), _t(TARGET))) == pytest.approx(0.0, abs=1e-6)


def test_class_loss_weights_sides_by_level_hand_case() -> None:
    # Three side outputs, coarsest first. The two coarse ones are constant, so their bilinear upsampling to 4×4
    # is the same constant; the finest is 4×4. Level i = 1 (finest) weighs 1, i = 2 ½, i = 3 ¼.
    fine = np.random.default_rng(3).normal(size=(4, 4))
    sides = {3: np.full((1, 1), -0.7), 2: np.full((2, 2), 0.3), 1: fine}
    expected = 0.0
    for level, logits in sides.items():
        full = np.full((4, 4), logits.flat[0]) if logits.shape != (4, 4) else logits
        prob = _sigmoid(full)
        per_level = _bce(full, TARGET) + _region_by_hand(prob, TARGET, 3) + _f_loss_by_hand(prob, TARGET)
        expected += per_level / 2 ** (level - 1)
    output = ModelOutput(saliency=[_t(sides[3]), _t(sides[2]), _t(sides[1])])
    loss, parts = class_loss(output, _t(TARGET), window=3)
    assert float(loss) == pytest.approx(expected, abs=1e-5)  # see the region test for the 1e-6 σ offset
    assert parts["loss"] == pytest.approx(parts["bce"] + parts["region"] + parts["object"])


def test_arn_loss_hand_case() -> None:
    rng = np.random.default_rng(4)
    coarse, fine = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    output = ModelOutput(saliency=[_t(coarse), _t(fine)])
    loss, _ = arn_loss(output, _t(TARGET))
    assert float(loss) == pytest.approx(_bce(fine, TARGET), rel=1e-9)  # final map only by default
    loss, _ = arn_loss(output, _t(TARGET), side_weights=(0.5, 1.0))
    assert float(loss) == pytest.approx(0.5 * _bce(coarse, TARGET) + _bce(fine, TARGET), rel=1e-9)


def test_attention_baseline_loss_hand_case() -> None:
    rng = np.random.default_rng(5)
    sides = [rng.normal(size=(2, 4, 4)) for _ in range(3)]
    target = np.stack([TARGET, 1 - TARGET])
    attention = rng.random(size=(2, 2, 2)) + 0.1  # sigmoid-style map at 2×2, for both images
    fixations = np.zeros((2, 4, 4))
    fixations[0, 0, 0], fixations[0, 3, 2] = 3.0, 1.0  # image 2 has no fixations: left out of the KL
    bce = sum(_bce(s, target) for s in sides)
    # fixation counts pooled to 2×2: [[3/4, 0], [0, 1/4]] → normalized (3/4, 0, 0, 1/4)
    q = np.array([[0.75, 0.0], [0.0, 0.25]])
    p = attention[0] / attention[0].sum()
    kl = sum(q[i, j] * (math.log(q[i, j]) - math.log(p[i, j])) for i in range(2) for j in range(2) if q[i, j] > 0)

    def batch(a: np.ndarray) -> torch.Tensor:
        return torch.tensor(a, dtype=torch.float64)[:, None]

    output = ModelOutput(
        saliency=[batch(s) for s in sides],
        attention={f"spatial/d{i}": batch(attention) for i in (1, 2, 3)},
    )
    loss, parts = attention_baseline_loss(output, batch(target), batch(fixations), kl_weight=0.01)
    assert parts["kl"] == pytest.approx(kl, rel=1e-9)
    assert float(loss) == pytest.approx(bce + 0.01 * kl, rel=1e-9)
    loss, parts = attention_baseline_loss(output, batch(target))
    assert float(loss) == pytest.approx(bce, rel=1e-9) and "kl" not in parts


def test_shuffled_rank_loss_hand_case() -> None:
    attention = torch.tensor([[[0.8, 0.1], [0.1, 0.2]], [[0.5, 0.5], [0.5, 0.5]], [[0.9, 0.9], [0.1, 0.1]]])[:, None]
    fixations = torch.zeros(3, 1, 2, 2)
    fixations[0, 0, 0, 0] = 2.0  # image 1 looks top-left, image 2 bottom-right, image 3 has no fixations
    fixations[1, 0, 1, 1] = 1.0
    # image 1: own fixation at (0, 0), the other's at (1, 1): softplus(log 0.2 − log 0.8) = log 1.25;
    # image 2: a constant map ranks nothing: log 2; image 3 is left out
    expected = (math.log(1.25) + math.log(2.0)) / 2
    assert float(shuffled_rank_loss(attention, fixations)) == pytest.approx(expected, rel=1e-6)
    flipped = attention.clone()
    flipped[0, 0] = torch.tensor([[0.2, 0.1], [0.1, 0.8]])  # image 1 now looks where the other image does
    assert float(shuffled_rank_loss(flipped, fixations)) > expected
    assert float(shuffled_rank_loss(attention, fixations[[0, 2, 2]])) == 0.0  # one image with fixations: no negatives


def test_attention_baseline_rank_term_is_weighted_in() -> None:
    attention = torch.rand(2, 1, 2, 2) + 0.1
    fixations = torch.zeros(2, 1, 2, 2)
    fixations[0, 0, 0, 0] = fixations[1, 0, 1, 0] = 1.0
    output = ModelOutput(saliency=[torch.zeros(2, 1, 4, 4)], attention={"spatial/d1": attention})
    target = torch.zeros(2, 1, 4, 4)
    plain, _ = attention_baseline_loss(output, target, fixations, kl_weight=0.0)
    loss, parts = attention_baseline_loss(output, target, fixations, kl_weight=0.0, rank_weight=2.0)
    assert parts["rank"] == pytest.approx(float(shuffled_rank_loss(attention, fixations)))
    assert float(loss) == pytest.approx(float(plain) + 2.0 * parts["rank"]) and "kl" not in parts


def test_build_loss_kinds() -> None:
    output = ModelOutput(saliency=[_t(np.zeros((4, 4)))])
    expected = _bce(np.zeros((4, 4)), TARGET)  # ln 2
    for kind in ("arn", "attention_baseline"):
        loss, _ = build_loss(LossConfig(kind=kind), model=None)(output, _t(TARGET))
        assert float(loss) == pytest.approx(expected)
    loss, parts = build_loss(LossConfig(kind="class", params={"window": 2}), model=None)(output, _t(TARGET))
    assert parts["bce"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="unknown loss kind"):
        build_loss(LossConfig(kind="nope"), model=None)
