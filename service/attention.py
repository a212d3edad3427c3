"""Place a query pixel's attention weights on the image, using the bundle's ``AttentionSpec`` geometry, and sum
an attention output up as one image-level map.

A query point in image pixels maps to a feature pixel of the attention output (through the stretch resize to the
network input and the output's stride). Its ``grid²`` weights sit on feature cells given by the spec (global: a
fixed dilated grid; local: a dilated window centred on the pixel); each cell's centre maps back to image pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.imaging import resize_map
from service.manifest import AttentionSpec


@dataclass(frozen=True)
class PlacedAttention:
    """One attention output of one query point, placed on the image.

    Attributes:
        feature_cell: (row, col) of the query point on the attention output's feature map.
        cells: ``[N,2]`` (row, col) feature cells of the weights, row-major over the grid.
        weights: ``[N]`` the weights as the model computed them.
        centres: ``[N,2]`` (x, y) image-pixel centre of each cell (may lie outside the image for local windows
            that overhang the border).
        inside: ``[N]`` whether the cell lies on the feature map (cells outside only ever saw zero padding).
        heatmap: float ``[H,W]`` in [0,1] (at the requested heatmap size), peaking where the weights are largest.
    """

    feature_cell: tuple[int, int]
    cells: np.ndarray
    weights: np.ndarray
    centres: np.ndarray
    inside: np.ndarray
    heatmap: np.ndarray


def feature_cell(
    point: tuple[float, float], image_size: tuple[int, int], input_size: int, stride: int, feature_hw: tuple[int, int]
) -> tuple[int, int]:
    """The (row, col) feature pixel covering image point (x, y); feature pixel ``y`` covers input rows
    ``[y*stride, (y+1)*stride)`` of the stretched ``input_size`` × ``input_size`` network input."""
    width, height = image_size
    col = int((point[0] * input_size / width) // stride)
    row = int((point[1] * input_size / height) // stride)
    return min(max(row, 0), feature_hw[0] - 1), min(max(col, 0), feature_hw[1] - 1)


def grid_cells(spec: AttentionSpec, cell: tuple[int, int]) -> np.ndarray:
    """``[grid², 2]`` (row, col) feature cells of a pixel's weights, row-major over (i, j), per ``AttentionSpec``."""
    steps = np.arange(spec.grid)
    if spec.kind == "global":
        rows = spec.offset + steps * spec.dilation
        cols = rows
    elif spec.kind == "local":
        rows = cell[0] + (steps - spec.grid // 2) * spec.dilation
        cols = cell[1] + (steps - spec.grid // 2) * spec.dilation
    else:
        rows, cols = np.array([cell[0]]), np.array([cell[1]])
    grid_rows, grid_cols = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([grid_rows.ravel(), grid_cols.ravel()], axis=1)


def cell_centres(cells: np.ndarray, stride: int, input_size: int, image_size: tuple[int, int]) -> np.ndarray:
    """``[N,2]`` (x, y) image-pixel centres of feature cells given as (row, col)."""
    width, height = image_size
    x = (cells[:, 1] + 0.5) * stride * width / input_size
    y = (cells[:, 0] + 0.5) * stride * height / input_size
    return np.stack([x, y], axis=1)


def place_attention(
    weights: np.ndarray,
    spec: AttentionSpec,
    point: tuple[float, float],
    image_size: tuple[int, int],
    input_size: int,
    heatmap_size: tuple[int, int] | None = None,
) -> PlacedAttention:
    """Place the weights of the pixel under ``point`` on the image.

    Args:
        weights: one image's attention output ``[grid², h, w]`` (``[1,h,w]`` for spatial maps).
        spec: the output's geometry from the manifest.
        point: (x, y) in original image pixels.
        image_size: (width, height) of the original image.
        input_size: the network input side S.
        heatmap_size: (width, height) of the heatmap; the image size by default.

    Returns:
        The placed weights and a heatmap at ``heatmap_size``. Spatial maps have no per-pixel weights: their
        heatmap is the whole map and their single weight is the value under the point.
    """
    feature_hw = (weights.shape[1], weights.shape[2])
    cell = feature_cell(point, image_size, input_size, spec.stride, feature_hw)
    cells = grid_cells(spec, cell)
    inside = (cells[:, 0] >= 0) & (cells[:, 0] < feature_hw[0]) & (cells[:, 1] >= 0) & (cells[:, 1] < feature_hw[1])
    if spec.kind == "spatial":
        values = weights[0, cell[0], cell[1]][None].astype(np.float32)
        canvas = weights[0].astype(np.float32)
    else:
        values = weights[:, cell[0], cell[1]].astype(np.float32)
        canvas = np.zeros(feature_hw, dtype=np.float32)
        # Weights of a global grid can land on the same cell only if the grid overhangs; add them up then.
        np.add.at(canvas, (cells[inside, 0], cells[inside, 1]), values[inside])
    peak = float(canvas.max())
    if peak > 0:
        canvas = canvas / peak
    heatmap = np.clip(resize_map(canvas, heatmap_size or image_size), 0.0, 1.0)
    centres = cell_centres(cells, spec.stride, input_size, image_size)
    return PlacedAttention(cell, cells, values, centres, inside, heatmap)


# What the image-level map of each attention kind shows (see :func:`attention_summary`).
SUMMARY_OF_KIND = {"global": "received", "local": "spread", "spatial": "map"}


def attention_summary(weights: np.ndarray, spec: AttentionSpec) -> np.ndarray:
    """One image's attention output summed up as one value per feature cell ``[h, w]``: where the model looked.

    - ``global`` (PiCANet's GAP, ARN's self-attention): attention **received**: the mean, over every pixel of the
      map, of the weight that pixel gives each grid cell (cells off the grid receive nothing). For a softmax the
      values sum to 1 over the grid.
    - ``local`` (PiCANet's LAP/AC windows): attention **spread**: the weight-averaged distance, in feature cells,
      from a pixel to the cells it weighs (0 = it looks only at itself); for sigmoid gates, normalised by their sum.
    - ``spatial`` (CLASS's FFM maps, the attention baselines): the map itself.

    Args:
        weights: ``[grid², h, w]`` (``[1, h, w]`` for spatial maps), as the model output them for one image.
        spec: the output's geometry from the manifest.
    """
    values = weights.astype(np.float64)
    height, width = values.shape[1:]
    if spec.kind == "spatial":
        return values[0].astype(np.float32)
    if spec.kind == "global":
        received = values.reshape(spec.grid * spec.grid, -1).mean(axis=1)
        cells = grid_cells(spec, (0, 0))
        inside = (cells[:, 0] >= 0) & (cells[:, 0] < height) & (cells[:, 1] >= 0) & (cells[:, 1] < width)
        canvas = np.zeros((height, width))
        np.add.at(canvas, (cells[inside, 0], cells[inside, 1]), received[inside])
        return canvas.astype(np.float32)
    offsets = (np.arange(spec.grid) - spec.grid // 2) * spec.dilation
    rows, cols = np.meshgrid(offsets, offsets, indexing="ij")
    distance = np.hypot(rows, cols).ravel()[:, None, None]
    total = values.sum(axis=0)
    spread = (values * distance).sum(axis=0) / np.where(total > 0, total, 1.0)
    return spread.astype(np.float32)


def extreme_points(saliency: np.ndarray) -> list[tuple[int, int]]:
    """Default query points: the (x, y) of the most salient pixel, then of the least salient one."""
    high = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    low = np.unravel_index(int(np.argmin(saliency)), saliency.shape)
    return [(int(high[1]), int(high[0])), (int(low[1]), int(low[0]))]
