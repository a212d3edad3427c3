"""Fixation metrics and baselines on hand-made cases with values worked out by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.baselines import baseline_map, centre_prior, spectral_residual
from training.data import read_fixations
from training.fixation_metrics import (
    CentreBias,
    FixationMetrics,
    auc,
    cc,
    fixation_density,
    information_gain,
    kl_divergence,
    nss,
    shuffled_auc,
)


def test_nss_hand_case() -> None:
    # values 0,0,0,1: mean 1/4, sample std sqrt((3·(1/4)² + (3/4)²)/3) = 1/2 → NSS at the 1 = (3/4)/(1/2) = 1.5
    saliency = np.array([[0.0, 0.0], [0.0, 1.0]])
    assert nss(saliency, np.array([[1, 1]])) == pytest.approx(1.5)
    # at a 0: (0 − 1/4)/(1/2) = −0.5; the mean over both fixations is 0.5
    assert nss(saliency, np.array([[1, 1], [0, 0]])) == pytest.approx(0.5)
    assert nss(np.ones((3, 3)), np.array([[1, 1]])) == 0.0


def test_cc_hand_case() -> None:
    a = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert cc(a, 2 * a + 5) == pytest.approx(1.0)
    assert cc(a, -a) == pytest.approx(-1.0)
    # a − mean = (−1.5, −.5, .5, 1.5); b = (1, 0, 0, 1) − .5 = (.5, −.5, −.5, .5)
    # Σab = −.75 + .25 − .25 + .75 = 0 → uncorrelated
    assert cc(a, np.array([[1.0, 0.0], [0.0, 1.0]])) == pytest.approx(0.0, abs=1e-12)
    # b = (0, 0, 0, 1): Σab = 1.5·.75 + (−1.5 −.5 +.5)(−.25) = 1.125 + .375 = 1.5;
    # Σa² = 5, Σb² = .75 → 1.5 / sqrt(3.75)
    assert cc(a, np.array([[0.0, 0.0], [0.0, 1.0]])) == pytest.approx(1.5 / math.sqrt(3.75))


def test_kl_hand_case() -> None:
    density = np.array([[0.5, 0.5]])
    assert kl_divergence(density, density) == pytest.approx(0.0, abs=1e-12)
    # P = (1/4, 3/4) (unnormalized 1, 3), Q = (1/2, 1/2): ½ ln 2 + ½ ln(2/3)
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert kl_divergence(np.array([[1.0, 3.0]]), density) == pytest.approx(expected, rel=1e-9)


def test_auc_and_shuffled_auc_hand_cases() -> None:
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0, 3.0])) == 0.0
    # positive 2 vs negatives 1, 2, 3: one below, one tie → (1 + ½)/3
    assert auc(np.array([2.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)
    saliency = np.zeros((4, 4))
    saliency[0, 3] = 1.0  # top-right corner salient
    fixations = np.array([[3, 0]])  # (x, y) on it
    # other images' fixations at relative (0.1, 0.1) and (0.9, 0.1) → pixels (0, 0) and (4→clipped 3, 0)
    others = np.array([[0.1, 0.1], [0.9, 0.1]])
    # positive value 1 vs negatives 0 and 1 → (1 + ½)/2
    assert shuffled_auc(saliency, fixations, others) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="positive and one negative"):
        auc(np.array([]), np.array([1.0]))


def test_information_gain_hand_case() -> None:
    baseline = np.ones((2, 2))  # uniform: 1/4 per pixel
    model = np.array([[0.5, 0.1666666666], [0.1666666667, 0.1666666667]])  # 1/2 at the fixation
    assert information_gain(model, np.array([[0, 0]]), baseline) == pytest.approx(1.0, rel=1e-6)  # log2(½ / ¼)
    assert information_gain(baseline, np.array([[1, 1]]), baseline) == pytest.approx(0.0, abs=1e-12)


def test_fixation_density_sums_to_one_and_peaks_at_fixation() -> None:
    density = fixation_density(np.array([[5, 2]]), (8, 10), sigma=1.0)
    assert density.sum() == pytest.approx(1.0)
    assert np.unravel_index(density.argmax(), density.shape) == (2, 5)
    assert fixation_density(np.zeros((0, 2)), (2, 2)).tolist() == [[0.25, 0.25], [0.25, 0.25]]


def test_fixation_metrics_rank_the_true_density_above_the_centre_prior(sod_dir: Path) -> None:
    fixations = read_fixations(sod_dir / "fixations.csv")
    stems = sorted(fixations)
    sizes = {s: Image.open(sod_dir / "images" / f"{s}.jpg").size for s in stems}
    relative = {s: np.array([[f.x / sizes[s][0], f.y / sizes[s][1]] for f in fixations[s]]) for s in stems}
    oracle, prior = FixationMetrics(), FixationMetrics()
    for stem in stems:
        w, h = sizes[stem]
        points = np.array([[f.x, f.y] for f in fixations[stem]])
        others = np.concatenate([relative[s] for s in stems if s != stem])
        oracle.update(fixation_density(points, (h, w)), points, others)
        prior.update(centre_prior((h, w)), points, others)
    good, base = oracle.results(), prior.results()
    assert good["n_fixation_images"] == len(stems) == 8
    assert good["ig_baseline"] == "centre_prior"
    assert base["information_gain"] == pytest.approx(0.0, abs=1e-9)  # the baseline against itself
    assert good["information_gain"] > 0.5
    assert good["nss"] > base["nss"] and good["cc"] > base["cc"] and good["kl"] < base["kl"]
    assert good["shuffled_auc"] > 0.75 > base["shuffled_auc"]


def test_baselines() -> None:
    prior = centre_prior((5, 7))
    assert prior.shape == (5, 7) and prior[2, 3] == prior.max()
    np.testing.assert_allclose(prior, prior[::-1, ::-1])  # symmetric about the centre
    # a bright square on a flat background stands out in the spectral residual
    image = np.full((64, 80, 3), 90, np.uint8)
    image[20:36, 30:46] = 230
    sr = spectral_residual(Image.fromarray(image))
    assert sr.shape == (64, 80) and sr.min() == 0.0 and sr.max() == 1.0
    assert sr[18:38, 28:48].mean() > 2 * sr[:, :20].mean()
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_map("nope", Image.fromarray(image))


def test_a_constant_map_scores_chance_against_a_uniform_baseline() -> None:
    constant = np.full((6, 8), 0.3)
    fixations = np.array([[1, 1], [6, 4]])
    others = np.array([[0.2, 0.9], [0.7, 0.1], [0.5, 0.5]])
    assert shuffled_auc(constant, fixations, others) == pytest.approx(0.5)
    assert information_gain(constant, fixations, np.ones((6, 8))) == pytest.approx(0.0, abs=1e-12)


def test_centre_bias_is_fitted_where_training_fixations_fall() -> None:
    bias = CentreBias(np.array([[0.25, 0.75]] * 50 + [[0.8, 0.1]] * 10), images=3)
    assert bias.name == "centre_bias fitted on 60 fixations of 3 training images"
    for shape in ((40, 60), (90, 30)):
        values = bias(shape)
        assert values.shape == shape and values.min() > 0  # the uniform share: no pixel is impossible
        row, col = np.unravel_index(int(values.argmax()), shape)
        assert row / shape[0] == pytest.approx(0.75, abs=0.05) and col / shape[1] == pytest.approx(0.25, abs=0.05)
    # A map equal to the baseline gains nothing over it; the baseline's own bits name it in the results.
    fixations = np.array([[15, 30], [48, 4]])
    assert information_gain(bias((40, 60)), fixations, bias((40, 60))) == pytest.approx(0.0, abs=1e-12)
    metrics = FixationMetrics(baseline=bias)
    metrics.update(bias((40, 60)), fixations, np.array([[0.5, 0.5]]))
    results = metrics.results()
    assert results["information_gain"] == pytest.approx(0.0, abs=1e-12) and results["ig_baseline"] == bias.name
    with pytest.raises(ValueError, match="needs fixations"):
        CentreBias(np.zeros((0, 2)), images=0)
