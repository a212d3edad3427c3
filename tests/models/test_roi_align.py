"""RoIAlign against a naive per-bin, per-sample loop of torchvision's definition, plus hand cases."""

from __future__ import annotations

import math

import pytest
import torch

from models.roi_align import RoIAlign, roi_align

torch.set_num_threads(1)


def _bilinear(plane: torch.Tensor, y: float, x: float) -> float:
    """torchvision's ``bilinear_interpolate`` for one channel plane, written out scalar by scalar."""
    height, width = plane.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1 - ly, 1 - lx
    return float(
        hy * hx * plane[y_low, x_low]
        + hy * lx * plane[y_low, x_high]
        + ly * hx * plane[y_high, x_low]
        + ly * lx * plane[y_high, x_high]
    )


def _naive_roi_align(features, boxes, out_h, out_w, scale, ratio, aligned):
    out = torch.zeros(boxes.shape[0], features.shape[1], out_h, out_w, dtype=torch.float64)
    offset = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(boxes.tolist()):
        start_x, start_y = x1 * scale - offset, y1 * scale - offset
        roi_w, roi_h = x2 * scale - offset - start_x, y2 * scale - offset - start_y
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_w, bin_h = roi_w / out_w, roi_h / out_h
        for c in range(features.shape[1]):
            plane = features[int(b), c].double()
            for py in range(out_h):
                for px in range(out_w):
                    total = 0.0
                    for iy in range(ratio):
                        y = start_y + py * bin_h + (iy + 0.5) * bin_h / ratio
                        for ix in range(ratio):
                            x = start_x + px * bin_w + (ix + 0.5) * bin_w / ratio
                            total += _bilinear(plane, y, x)
                    out[k, c, py, px] = total / (ratio * ratio)
    return out


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("ratio", [1, 2, 3])
def test_matches_naive_loop_on_random_input(aligned: bool, ratio: int) -> None:
    gen = torch.Generator().manual_seed(ratio + 10 * aligned)
    features = torch.randn(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    # Boxes inside, straddling the border, degenerate, fully outside and a tiny one (stride 4 → scale 0.25).
    boxes = torch.tensor(
        [
            [0, 4.0, 6.0, 30.0, 22.0],
            [1, -10.0, -3.0, 20.0, 50.0],
            [1, 12.0, 12.0, 12.0, 12.0],
            [0, 60.0, 50.0, 90.0, 80.0],
            [1, 33.3, 7.7, 35.1, 9.2],
            [0, 0.0, 0.0, 44.0, 36.0],
        ],
        dtype=torch.float64,
    )
    got = roi_align(features, boxes, (3, 4), spatial_scale=0.25, sampling_ratio=ratio, aligned=aligned)
    want = _naive_roi_align(features, boxes, 3, 4, 0.25, ratio, aligned)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_constant_map_gives_the_constant() -> None:
    features = torch.full((1, 2, 8, 8), 3.5)
    boxes = torch.tensor([[0, 1.0, 1.0, 7.0, 5.0], [0, 0.0, 0.0, 8.0, 8.0], [0, 2.2, 3.1, 2.9, 7.6]])
    out = roi_align(features, boxes, 7, spatial_scale=1.0, sampling_ratio=2)
    torch.testing.assert_close(out, torch.full((3, 2, 7, 7), 3.5))


def test_linear_ramp_gives_the_bin_centre_value() -> None:
    # f(y, x) = 2x + 3y + 1 at pixel centres; bilinear sampling is exact on a plane, and averaging symmetric samples
    # gives the value at the bin centre. aligned=True: pixel i covers [i, i+1) and its centre is continuous i + 0.5.
    height, width = 10, 12
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    features = (2 * xs + 3 * ys + 1)[None, None]
    x1, y1, x2, y2 = 2.0, 3.0, 9.0, 8.0
    out = roi_align(features, torch.tensor([[0, x1, y1, x2, y2]], dtype=torch.float64), (5, 7), sampling_ratio=2)
    bin_h, bin_w = (y2 - y1) / 5, (x2 - x1) / 7
    centre_y = y1 + (torch.arange(5, dtype=torch.float64) + 0.5) * bin_h - 0.5  # continuous → pixel-index frame
    centre_x = x1 + (torch.arange(7, dtype=torch.float64) + 0.5) * bin_w - 0.5
    expected = 2 * centre_x[None, :] + 3 * centre_y[:, None] + 1
    torch.testing.assert_close(out[0, 0], expected, rtol=1e-12, atol=1e-12)


def test_box_beyond_the_map_pools_zero() -> None:
    features = torch.randn(1, 1, 6, 6)
    out = roi_align(features, torch.tensor([[0, 40.0, 40.0, 60.0, 60.0]]), 2, sampling_ratio=2)
    assert torch.count_nonzero(out) == 0


def test_batch_index_selects_the_image() -> None:
    features = torch.stack([torch.zeros(1, 5, 5), torch.ones(1, 5, 5)])
    out = roi_align(features, torch.tensor([[1, 0.0, 0.0, 5.0, 5.0], [0, 0.0, 0.0, 5.0, 5.0]]), 2)
    assert out[0].eq(1).all() and out[1].eq(0).all()


def test_gradient_wrt_features_matches_weights() -> None:
    # Pooling is linear in the features: d(sum of the output)/d(feature) is the total sampling weight of each pixel,
    # which must add up to ph*pw for a box whose samples all fall inside the map.
    features = torch.randn(1, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    out = RoIAlign(3, spatial_scale=0.5, sampling_ratio=2)(features, torch.tensor([[0, 2.0, 2.0, 12.0, 10.0]]))
    out.sum().backward()
    assert features.grad is not None
    assert math.isclose(features.grad.sum().item(), 9.0, rel_tol=1e-12)
    assert torch.autograd.gradcheck(
        lambda f: roi_align(f, torch.tensor([[0, 1.5, 2.5, 13.0, 9.0]], dtype=torch.float64), 2, 0.5), (features,)
    )


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sampling_ratio"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 5), 2, sampling_ratio=0)
    with pytest.raises(ValueError, match="boxes"):
        roi_align(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4), 2)


def test_no_boxes_and_low_precision_features() -> None:
    features = torch.randn(1, 4, 8, 8)
    assert roi_align(features, torch.zeros(0, 5), 7).shape == (0, 4, 7, 7)
    # bf16 features: sampling positions are still computed in float32, only the products run in bf16.
    boxes = torch.tensor([[0, 1.3, 2.7, 6.9, 7.4]])
    low = roi_align(features.bfloat16(), boxes, 3)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), roi_align(features, boxes, 3), rtol=0.02, atol=0.05)
