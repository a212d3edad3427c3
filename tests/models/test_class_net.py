"""CLASS: position/channel attention against eq. (1)–(6) by hand, identity at initialisation, FFM, model outputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.class_net import ChannelAttention, FeatureFusion, PositionAttention

torch.set_num_threads(1)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    high = torch.randn(2, 16, 3, 4, dtype=torch.float64)
    low = torch.randn(2, 16, 6, 8, dtype=torch.float64)
    return high, low


def test_position_attention_is_eq1_to_eq3() -> None:
    high, low = _pair()
    module = PositionAttention(16).double()
    with torch.no_grad():
        module.alpha.fill_(0.7)
    out = module(high, low)
    for b in range(2):
        f_h = module.query(high)[b].reshape(2, -1)  # [C', N_h]
        f_l = module.key(low)[b].reshape(2, -1)  # [C', N_l]
        v_l = module.value(low)[b].reshape(16, -1)  # [C, N_l]
        n_h, n_l = f_h.shape[1], f_l.shape[1]
        expected = torch.empty(16, n_h, dtype=torch.float64)
        for i in range(n_h):
            energies = torch.stack([f_h[:, i] @ f_l[:, j] for j in range(n_l)])
            s_i = torch.exp(energies) / torch.exp(energies).sum()  # eq. (1), row i of S
            expected[:, i] = sum(s_i[j] * v_l[:, j] for j in range(n_l))  # eq. (2)
        expected = 0.7 * expected.reshape(16, 3, 4) + high[b]  # eq. (3)
        torch.testing.assert_close(out[b], expected)


def test_channel_attention_is_eq4_to_eq6() -> None:
    high, low = _pair()
    module = ChannelAttention().double()
    with torch.no_grad():
        module.beta.fill_(-0.4)
    out = module(high, low)
    f_H = F.interpolate(high, size=(6, 8), mode="bilinear", align_corners=False)
    for b in range(2):
        f_L = low[b].reshape(16, -1)
        f_Hb = f_H[b].reshape(16, -1)
        expected = torch.empty_like(f_L)
        for i in range(16):
            energies = torch.stack([f_L[i] @ f_Hb[j] for j in range(16)])
            z_i = torch.exp(energies - energies.max()) / torch.exp(energies - energies.max()).sum()  # eq. (4)
            expected[i] = sum(z_i[j] * f_Hb[j] for j in range(16))  # eq. (5)
        torch.testing.assert_close(out[b], -0.4 * expected.reshape(16, 6, 8) + low[b])  # eq. (6)


def test_cross_level_attention_starts_as_identity() -> None:
    high, low = _pair()
    position, channel = PositionAttention(16).double(), ChannelAttention().double()
    assert position.alpha.item() == 0.0 and channel.beta.item() == 0.0
    torch.testing.assert_close(position(high, low), high, rtol=0, atol=0)
    torch.testing.assert_close(channel(high, low), low, rtol=0, atol=0)
    model = build_model("class_lite")
    assert all(p.alpha.item() == 0.0 for p in model.position)
    assert all(c.beta.item() == 0.0 for c in model.channel)


def test_feature_fusion_weight_map_gates_the_refined_features() -> None:
    torch.manual_seed(1)
    ffm = FeatureFusion(12, 4).eval()
    x = torch.randn(2, 12, 5, 5)
    out, weight = ffm(x)
    assert weight.shape == (2, 1, 5, 5)
    assert (weight > 0).all() and (weight < 1).all()
    reduced = ffm.reduce(x)
    refined = ffm.refine(reduced)
    torch.testing.assert_close(weight, torch.sigmoid(ffm.weight(refined)))
    torch.testing.assert_close(out, weight * refined + reduced)
    refine_convs = [m for m in ffm.refine.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.kernel_size for c in refine_convs] == [(3, 3), (3, 3)]
    assert ffm.reduce[0].kernel_size == (1, 1) and ffm.weight.kernel_size == (1, 1)


def test_class_models_return_four_side_outputs_and_ffm_maps() -> None:
    torch.manual_seed(0)
    model = build_model("class_lite").eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert [tuple(s.shape[-2:]) for s in out.saliency] == [(4, 4), (4, 4), (8, 8), (16, 16)]
    geometry = {g.name: g for g in model.attention_geometry()}
    assert list(out.attention) == ["spatial/d4", "spatial/d3", "spatial/d2"] == list(geometry)
    for name, weights in out.attention.items():
        assert weights.shape[-1] * geometry[name].stride == 64
        assert geometry[name].normalization == "sigmoid" and (weights >= 0).all() and (weights <= 1).all()
    resnet = build_model("class_resnet50")
    assert resnet.input_size == 352 and resnet.encoder.strides == [2, 4, 8, 16, 32]
    assert [g.stride for g in resnet.attention_geometry()] == [16, 8, 4]


def test_class_rejects_input_not_divisible_by_its_stride() -> None:
    model = build_model("class_lite")
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 70, 70))
