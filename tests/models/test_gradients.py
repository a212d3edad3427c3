"""Gradients reach every parameter of the PiCANet, CLASS and ARN models (forward + backward on CPU).

Attention scales (CLASS alpha/beta, ARN gamma) start at 0, which makes the gradients of the query/key/value
projections exactly 0; they are set to 0.5 first so the test sees those projections take part in the graph.
"""

from __future__ import annotations

import pytest
import torch

from models import build_model

torch.set_num_threads(1)

# The smallest input each model accepts (PiCANet's GAP needs its fixed input size; the others need a multiple of
# their output stride).
SMALLEST_INPUT = {
    "picanet_lite": 224,
    "picanet_lite_lap": 224,
    "picanet_vgg16": 112,
    "picanet_effl0": 64,
    "class_lite": 64,
    "class_effl0": 64,
    "class_resnet50": 64,
    "arn_lite": 64,
    "arn_effl0": 64,
    "arn_vgg16": 64,
}
# picanet_vgg16 at 224 takes 40-90 s for forward+backward on one shared core; at 112 its GAP grid must shrink
# (4×4 cells, dilation 3 on the 14×14 map): every module and parameter is the same except GAP's logits width.
OVERRIDES = {"picanet_vgg16": {"input_size": 112, "global_grid": 4}, "picanet_effl0": {"input_size": 64}}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "picanet_vgg16" else n for n in sorted(SMALLEST_INPUT)]
)
def test_gradients_reach_every_parameter(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **OVERRIDES.get(name, {})).train()
    with torch.no_grad():
        for param_name, param in model.named_parameters():
            if param_name.rsplit(".", 1)[-1] in ("alpha", "beta", "gamma"):
                param.fill_(0.5)
    size = SMALLEST_INPUT[name]
    out = model(torch.randn(1, 3, size, size))
    loss = sum(side.square().mean() for side in out.saliency) + sum(a.mean() for a in out.attention.values())
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    no_grad = [n for n, p in params if p.grad is None]
    assert not no_grad, f"{name}: no gradient for {no_grad}"
    not_finite = [n for n, p in params if not torch.isfinite(p.grad).all()]
    assert not not_finite, f"{name}: non-finite gradient for {not_finite}"
    all_zero = [n for n, p in params if not p.grad.any()]
    assert not all_zero, f"{name}: all-zero gradient for {all_zero}"
