"""Every registered model exports to ONNX (dynamic batch) and ONNX Runtime matches PyTorch on real images.

Untrained weights, batch 2. VGG16/ResNet-sized models (> 20M parameters) are exported and checked with
onnx.checker only: their ORT parity run costs several seconds per image on 2 shared cores, and the modules
they contain (attention, decoders) are the same code the lite variants exercise with the full parity check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.images import list_images, load_batch
from export.onnx_export import export_onnx
from export.parity import check_parity, cpu_session, max_abs_diff
from models import build_model, list_models
from training.transforms import Preprocess

HEAVY_PARAMS = 20_000_000


def _params(name: str) -> int:
    return sum(p.numel() for p in build_model(name).parameters())


_SIZES = {name: _params(name) for name in list_models()}
LIGHT = [n for n, p in _SIZES.items() if p <= HEAVY_PARAMS]
HEAVY = [n for n, p in _SIZES.items() if p > HEAVY_PARAMS]


def _export(name: str, tmp_path: Path):
    torch.manual_seed(0)
    model = build_model(name).eval()
    size = getattr(model, "input_size", 224)
    return model, size, export_onnx(model, tmp_path / f"{name}.onnx", size)


@pytest.mark.parametrize("name", LIGHT)
def test_export_matches_pytorch(name: str, tmp_path: Path, fixture_images: Path) -> None:
    _, size, graph = _export(name, tmp_path)
    images = load_batch(list_images(fixture_images, limit=2), Preprocess(input_size=size))
    diffs = max_abs_diff(graph.wrapper, cpu_session(graph.path), images, batch_size=2)
    assert set(diffs) == {o.name for o in graph.outputs}
    embedding = diffs.pop("embedding", None)
    check_parity(diffs, 1e-4, name)
    if embedding is not None:  # unbounded features: compare relative to their scale
        with torch.no_grad():
            scale = float(np.abs(graph.wrapper(torch.from_numpy(images))[-1].numpy()).max())
        assert embedding <= 1e-4 * max(scale, 1.0)


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_heavy_model_exports_with_dynamic_batch(name: str, tmp_path: Path) -> None:
    _, _, graph = _export(name, tmp_path)
    session = cpu_session(graph.path)
    assert session.get_inputs()[0].shape[0] == "batch"
    assert [o.name for o in session.get_outputs()] == [o.name for o in graph.outputs]
    graph.path.unlink()  # 100-200 MB each
