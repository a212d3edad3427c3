"""PiCANet: GAP/LAP/AC against per-pixel loops of eq. (2), (3), (5); softmax/sigmoid ranges; Table I settings."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from models import build_model
from models.picanet import parse_setting
from models.picanet_modules import (
    AttentionConvolution,
    GlobalAttentionPooling,
    LocalAttentionPooling,
    global_grid_offset,
)

torch.set_num_threads(1)

C, SIZE = 3, 9


def _feature_map() -> Tensor:
    torch.manual_seed(0)
    return torch.randn(2, C, SIZE, SIZE, dtype=torch.float64)


def _neighbour(x: Tensor, b: int, y: int, xx: int) -> Tensor:
    """``x[b, :, y, xx]``, or zeros outside the map (the paper's zero padding)."""
    if 0 <= y < x.shape[2] and 0 <= xx < x.shape[3]:
        return x[b, :, y, xx]
    return torch.zeros(x.shape[1], dtype=x.dtype)


def test_gap_weights_are_a_softmax_and_pooling_is_eq2() -> None:
    x = _feature_map()
    grid, dilation = 3, 3
    gap = GlobalAttentionPooling(C, grid=grid, dilation=dilation, hidden=4).double().eval()
    pooled, alpha = gap(x)
    assert alpha.shape == (2, grid * grid, SIZE, SIZE)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(2, SIZE, SIZE, dtype=torch.float64))
    assert (alpha > 0).all()
    offset = global_grid_offset(SIZE, grid, dilation)
    assert offset == 1  # the 7-pixel span is centred on the 9-pixel map
    expected = torch.zeros_like(pooled)
    for b in range(2):
        for y in range(SIZE):
            for xx in range(SIZE):
                for i in range(grid * grid):
                    r, c = divmod(i, grid)
                    cell = x[b, :, offset + r * dilation, offset + c * dilation]
                    expected[b, :, y, xx] += alpha[b, i, y, xx] * cell
    torch.testing.assert_close(pooled, expected)


@pytest.mark.parametrize("separable", [False, True])
def test_lap_weights_are_a_softmax_and_pooling_is_eq3(separable: bool) -> None:
    x = _feature_map()
    kernel, dilation = 3, 2
    lap = LocalAttentionPooling(C, kernel=kernel, dilation=dilation, hidden=5, separable=separable).double()
    pooled, alpha = lap(x)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(2, SIZE, SIZE, dtype=torch.float64))
    expected = torch.zeros_like(pooled)
    half = kernel // 2
    for b in range(2):
        for y in range(SIZE):
            for xx in range(SIZE):
                for i in range(kernel * kernel):
                    r, c = divmod(i, kernel)
                    f_i = _neighbour(x, b, y + (r - half) * dilation, xx + (c - half) * dilation)
                    expected[b, :, y, xx] += alpha[b, i, y, xx] * f_i
    torch.testing.assert_close(pooled, expected)
    # Border pixels see zeros: their pooled value differs from pooling without padding.
    assert not torch.allclose(pooled[:, :, 0, 0], (alpha[:, :, 0, 0, None] * x[:, None, :, 0, 0]).sum(1))


def test_ac_gates_lie_in_unit_interval_and_convolution_is_eq5() -> None:
    x = _feature_map()
    kernel, dilation, out_channels = 3, 2, 4
    ac = AttentionConvolution(C, out_channels, kernel=kernel, dilation=dilation, hidden=5).double()
    with torch.no_grad():
        ac.bias.normal_()
    out, gates = ac(x)
    assert out.shape == (2, out_channels, SIZE, SIZE)
    assert gates.shape == (2, kernel * kernel, SIZE, SIZE)
    assert (gates >= 0).all() and (gates <= 1).all()
    # Sigmoid gates are independent: they do not sum to 1.
    assert not torch.allclose(gates.sum(dim=1), torch.ones_like(gates[:, 0]))
    expected = torch.zeros_like(out)
    half = kernel // 2
    weight = ac.weight.detach()
    for b in range(2):
        for y in range(SIZE):
            for xx in range(SIZE):
                value = ac.bias.detach().clone()
                for i in range(kernel * kernel):
                    r, c = divmod(i, kernel)
                    f_i = _neighbour(x, b, y + (r - half) * dilation, xx + (c - half) * dilation)
                    value += gates[b, i, y, xx] * (weight[:, :, r, c] @ f_i)
                expected[b, :, y, xx] = value
    torch.testing.assert_close(out, expected)


def test_ac_with_all_gates_open_is_a_plain_dilated_convolution() -> None:
    x = _feature_map()
    ac = AttentionConvolution(C, 4, kernel=3, dilation=2, hidden=5).double()
    with torch.no_grad():
        last = ac.gates.net[-1]
        last.weight.zero_()
        last.bias.fill_(50.0)  # sigmoid(50) == 1 in float64 to ~1e-22
    out, _ = ac(x)
    reference = torch.nn.functional.conv2d(x, ac.weight, ac.bias, padding=2, dilation=2)
    torch.testing.assert_close(out, reference)


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("6GAP_5432AC", {6: "GAP", 5: "AC", 4: "AC", 3: "AC", 2: "AC"}),
        ("6GAP_5432LAP", {6: "GAP", 5: "LAP", 4: "LAP", 3: "LAP", 2: "LAP"}),
        ("65432AC", {6: "AC", 5: "AC", 4: "AC", 3: "AC", 2: "AC"}),
        ("6GAP_543AC", {6: "GAP", 5: "AC", 4: "AC", 3: "AC"}),
        ("6GAP", {6: "GAP"}),
        ("unet", {}),
    ],
)
def test_parse_setting(setting: str, expected: dict[int, str]) -> None:
    assert parse_setting(setting) == expected


@pytest.mark.parametrize("setting", ["", "6XYZ", "6GAP_54321AC", "GAP", "6GAP_5432"])
def test_parse_setting_rejects_bad_names(setting: str) -> None:
    with pytest.raises(ValueError):
        parse_setting(setting)


def test_setting_override_changes_the_modules() -> None:
    lap = build_model("picanet_lite_lap")
    assert lap.levels == {6: "GAP", 5: "LAP", 4: "LAP", 3: "LAP"}
    unet = build_model("picanet_lite_lap", setting="unet")
    assert unet.levels == {} and unet.attention_geometry() == []
    assert all(module.attention is None for module in unet.decoder)
    ac = build_model("picanet_lite_lap", setting="6GAP_543AC")
    assert [g.normalization for g in ac.attention_geometry()] == ["softmax", "sigmoid", "sigmoid", "sigmoid"]


def test_picanet_vgg16_matches_the_paper_configuration() -> None:
    model = build_model("picanet_vgg16")
    assert model.levels == {6: "GAP", 5: "AC", 4: "AC", 3: "AC", 2: "AC"}
    assert model.encoder.strides == [1, 2, 4, 8, 8, 8]
    assert model.encoder.channels == [64, 128, 256, 512, 512, 1024]
    gap = model.decoder[0].attention
    assert (gap.grid, gap.dilation, gap.renet.out_channels) == (10, 3, 512)
    d5 = model.decoder[1]
    assert (d5.attention.kernel, d5.attention.dilation) == (7, 2)
    context = d5.attention.gates.net[0]
    assert (context.kernel_size, context.dilation, context.out_channels) == ((7, 7), (2, 2), 128)
    assert all(m.fuse[0].kernel_size == (1, 1) for m in model.decoder)
    geometry = model.attention_geometry()
    assert geometry[0].name == "global" and geometry[0].stride == 8 and geometry[0].offset == 0
    assert [g.name for g in geometry[1:]] == ["local/d5", "local/d4", "local/d3", "local/d2"]
    assert [g.stride for g in geometry[1:]] == [8, 8, 4, 2]
