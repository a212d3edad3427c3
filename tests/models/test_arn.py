"""ARN: self-attention against eq. (1)–(4) by hand, identity at initialisation, RCL eq. (5)–(8) and weight sharing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.arn import RecurrentConvLayer, SelfAttention, make_upsampler

torch.set_num_threads(1)


def test_self_attention_is_eq1_to_eq4() -> None:
    torch.manual_seed(0)
    module = SelfAttention(16).double()
    with torch.no_grad():
        module.gamma.fill_(1.3)
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    y, weights = module(x)
    assert weights.shape == (2, 15, 3, 5)
    assert module.f.out_channels == module.g.out_channels == 2  # C/8
    for b in range(2):
        f = module.f(x)[b].reshape(2, -1)
        g = module.g(x)[b].reshape(2, -1)
        h = module.h(x)[b].reshape(16, -1)
        n = f.shape[1]
        o = torch.empty(16, n, dtype=torch.float64)
        for j in range(n):
            s = torch.stack([f[:, i] @ g[:, j] for i in range(n)])  # s_ij = f(x_i)^T g(x_j)
            beta = torch.exp(s) / torch.exp(s).sum()  # softmax over positions i
            o[:, j] = sum(beta[i] * h[:, i] for i in range(n))
            torch.testing.assert_close(weights[b, :, j // 5, j % 5], beta)  # pixel j's weights over every i
        torch.testing.assert_close(y[b], 1.3 * o.reshape(16, 3, 5) + x[b])


def test_self_attention_starts_as_identity() -> None:
    module = SelfAttention(16)
    assert module.gamma.item() == 0.0
    x = torch.randn(1, 16, 4, 4)
    torch.testing.assert_close(module(x)[0], x, rtol=0, atol=0)
    model = build_model("arn_lite")
    assert [m.gamma.item() for m in model.attention.values()] == [0.0, 0.0]


def _lrn_eq8(f: torch.Tensor, size: int, alpha: float, beta: float) -> torch.Tensor:
    """Eq. (8) with a loop over channels: f_k / (1 + alpha/N * sum_{k'=k-N/2}^{k+N/2} f_k'^2)^beta."""
    channels = f.shape[1]
    out = torch.empty_like(f)
    for k in range(channels):
        lo, hi = max(0, k - size // 2), min(channels - 1, k + size // 2)
        energy = (f[:, lo : hi + 1] ** 2).sum(dim=1)
        out[:, k] = f[:, k] / (1 + alpha / size * energy) ** beta
    return out


def test_rcl_is_eq5_to_eq8_with_shared_weights() -> None:
    torch.manual_seed(0)
    rcl = RecurrentConvLayer(5, 16, steps=3).double()
    u = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    size = rcl.norm.size
    assert size == 3  # 16 // 8 + 1, an odd window
    w_f, b, w_r = rcl.feedforward.weight, rcl.feedforward.bias, rcl.recurrent.weight
    x = _lrn_eq8(F.relu(F.conv2d(u, w_f, b, padding=1)), size, 0.001, 0.75)
    for _ in range(3):
        z = F.conv2d(u, w_f, b, padding=1) + F.conv2d(x, w_r, padding=1)  # eq. (6)
        x = _lrn_eq8(F.relu(z), size, 0.001, 0.75)  # eq. (5), (7), (8)
    torch.testing.assert_close(rcl(u), x)


def test_rcl_parameters_do_not_depend_on_the_number_of_steps() -> None:
    shallow, deep = RecurrentConvLayer(8, 16, steps=1), RecurrentConvLayer(8, 16, steps=5)
    assert [p.shape for p in shallow.parameters()] == [p.shape for p in deep.parameters()]
    # Every step calls the same two convolution modules, i.e. the same parameter objects.
    calls: list[int] = []
    deep.recurrent.register_forward_hook(lambda m, i, o: calls.append(id(m.weight)))
    deep(torch.randn(1, 8, 4, 4))
    assert len(calls) == 5 and len(set(calls)) == 1
    # More steps change the output (the recurrence is live), with the same weights.
    deep.load_state_dict(shallow.state_dict())
    u = torch.randn(1, 8, 4, 4)
    assert not torch.allclose(shallow(u), deep(u))


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_transposed_convolution_upsamples_exactly(factor: int) -> None:
    up = make_upsampler(4, factor)
    assert up(torch.randn(1, 4, 7, 5)).shape == (1, 4, 7 * factor, 5 * factor)


def test_arn_side_outputs_follow_the_stages() -> None:
    model = build_model("arn_vgg16").eval()
    assert model.attention_stages == (5, 4, 3, 2)
    # Only S5's self-attention is returned: a "global" grid covering the whole 14×14 map at stride 16.
    assert [(g.name, g.kind, g.grid, g.dilation, g.stride, g.offset) for g in model.attention_geometry()] == [
        ("self/s5", "global", 14, 1, 16, 0)
    ]
    assert [model.encoder.channels[i] for i in (1, 2, 3, 4)] == [128, 256, 512, 512]  # Conv2_2…Conv5_3
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert [tuple(s.shape[-2:]) for s in out.saliency] == [(4, 4), (8, 8), (16, 16), (32, 32)]
    weights = out.attention["self/s5"]  # 4×4 map at 64 px: 16 weights per pixel, a softmax over the map
    assert list(out.attention) == ["self/s5"] and weights.shape == (1, 16, 4, 4)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(1, 4, 4))
    effl0 = build_model("arn_effl0")
    assert [(g.name, g.grid, g.stride) for g in effl0.attention_geometry()] == [("self/s5", 7, 32), ("self/s4", 14, 16)]
    lite = build_model("arn_lite", attention_stages=(5, 4, 3))
    assert sorted(lite.attention) == ["3", "4", "5"]
    with pytest.raises(ValueError, match="among 5, 4, 3, 2"):
        build_model("arn_lite", attention_stages=(6,))
