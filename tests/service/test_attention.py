"""Placing attention weights on the image: geometry by hand, and the heatmap peaking where the weights say."""

from __future__ import annotations

import numpy as np

from service.attention import (
    attention_summary,
    cell_centres,
    extreme_points,
    feature_cell,
    grid_cells,
    place_attention,
)
from service.manifest import AttentionSpec

GLOBAL = AttentionSpec(kind="global", grid=7, dilation=2, stride=16, offset=1, normalization="softmax")
LOCAL = AttentionSpec(kind="local", grid=3, dilation=2, stride=8, normalization="sigmoid")


def test_feature_cell_follows_the_stretch_resize() -> None:
    # 448x224 image stretched to 224: x is halved, y kept; stride 16 → feature pixel = floor(coord / 16).
    assert feature_cell((100, 50), (448, 224), 224, 16, (14, 14)) == (50 // 16, 50 // 16)
    assert feature_cell((447, 223), (448, 224), 224, 16, (14, 14)) == (13, 13)
    assert feature_cell((0, 0), (448, 224), 224, 16, (14, 14)) == (0, 0)


def test_grid_cells_match_the_spec() -> None:
    cells = grid_cells(GLOBAL, (5, 9))
    assert cells.shape == (49, 2)
    assert tuple(cells[0]) == (1, 1) and tuple(cells[1]) == (1, 3) and tuple(cells[7]) == (3, 1)  # row-major
    assert tuple(cells[-1]) == (13, 13)
    local = grid_cells(LOCAL, (5, 9))
    assert [tuple(c) for c in local] == [(r, c) for r in (3, 5, 7) for c in (7, 9, 11)]


def test_cell_centres_in_image_pixels() -> None:
    centres = cell_centres(np.array([[0, 0], [13, 2]]), 16, 224, (448, 112))
    np.testing.assert_allclose(centres, [[16.0, 4.0], [(2.5 * 16) * 2, 13.5 * 16 / 2]])


def test_heatmap_peaks_at_the_largest_weight() -> None:
    rng = np.random.default_rng(0)
    weights = rng.random((49, 14, 14)).astype(np.float32) * 0.1
    image_size = (300, 200)
    point = (250.0, 20.0)
    row, col = feature_cell(point, image_size, 224, 16, (14, 14))
    weights[:, row, col] = 0.01
    weights[30, row, col] = 0.9  # grid cell i=4, j=2 → feature (1 + 4*2, 1 + 2*2) = (9, 5)
    placed = place_attention(weights, GLOBAL, point, image_size, 224)
    assert placed.feature_cell == (row, col)
    np.testing.assert_array_equal(placed.weights, weights[:, row, col])
    assert tuple(placed.cells[30]) == (9, 5)
    peak_y, peak_x = np.unravel_index(np.argmax(placed.heatmap), placed.heatmap.shape)
    expected_x, expected_y = placed.centres[30]
    assert abs(peak_x - expected_x) <= 1.5 and abs(peak_y - expected_y) <= 1.5
    assert placed.heatmap.shape == (200, 300) and placed.heatmap.max() > 0.9 and placed.inside.all()


def test_local_window_overhanging_the_border() -> None:
    weights = np.zeros((9, 28, 28), np.float32)
    weights[:, 0, 0] = np.arange(1, 10) / 10
    placed = place_attention(weights, LOCAL, (0.0, 0.0), (224, 224), 224)
    # Window centred on (0,0) with dilation 2: rows/cols -2, 0, 2; only the 4 cells with both >= 0 are inside.
    assert placed.inside.tolist() == [False, False, False, False, True, True, False, True, True]
    # The largest inside weight (0.9 at cell (2,2)) makes the peak, at input pixels 16..24 → centre 20.
    peak_y, peak_x = np.unravel_index(np.argmax(placed.heatmap), placed.heatmap.shape)
    assert abs(peak_x - 20) <= 1.5 and abs(peak_y - 20) <= 1.5


def test_extreme_points() -> None:
    saliency = np.full((5, 8), 0.5, np.float32)
    saliency[1, 6] = 1.0
    saliency[4, 2] = 0.0
    assert extreme_points(saliency) == [(6, 1), (2, 4)]


def test_global_summary_is_the_attention_each_cell_receives() -> None:
    whole = AttentionSpec(kind="global", grid=2, dilation=1, stride=8, normalization="softmax")
    weights = np.zeros((4, 2, 2))
    weights[0] = 1.0  # every pixel looks at cell (0, 0) ...
    weights[:, 1, 1] = [0.0, 0.0, 0.0, 1.0]  # ... but pixel (1, 1) looks at cell (1, 1)
    np.testing.assert_allclose(attention_summary(weights, whole), [[0.75, 0.0], [0.0, 0.25]])
    sparse = AttentionSpec(kind="global", grid=2, dilation=2, stride=8, normalization="softmax")  # cells 0 and 2
    received = attention_summary(np.full((4, 3, 3), 0.25), sparse)
    np.testing.assert_allclose(received, [[0.25, 0, 0.25], [0, 0, 0], [0.25, 0, 0.25]])
    assert received.sum() == 1.0  # a softmax hands out exactly one unit per pixel, on average one in all


def test_local_summary_is_the_spread_in_feature_cells() -> None:
    window = AttentionSpec(kind="local", grid=3, dilation=2, stride=4, normalization="softmax")
    weights = np.zeros((9, 1, 3))
    weights[4, 0, 0] = 1.0  # looks at itself
    weights[0, 0, 1] = 1.0  # looks at the top-left cell: 2 cells up and 2 left
    weights[[1, 3], 0, 2] = 0.5  # half up, half left: 2 cells away either way
    np.testing.assert_allclose(attention_summary(weights, window), [[0.0, np.hypot(2, 2), 2.0]], rtol=1e-6)
    gates = AttentionSpec(kind="local", grid=3, dilation=1, stride=4, normalization="sigmoid")
    spread = attention_summary(np.full((9, 1, 1), 0.5), gates)  # equal gates: the mean distance of the window
    np.testing.assert_allclose(spread, [[(4 * 1 + 4 * np.sqrt(2)) / 9]], rtol=1e-6)
    assert attention_summary(np.zeros((9, 1, 1)), gates)[0, 0] == 0.0  # all gates shut: no spread, no NaN


def test_spatial_summary_is_the_map() -> None:
    spatial = AttentionSpec(kind="spatial", grid=1, dilation=1, stride=4, normalization="sigmoid")
    values = np.random.default_rng(0).random((1, 5, 6)).astype(np.float32)
    np.testing.assert_array_equal(attention_summary(values, spatial), values[0])
