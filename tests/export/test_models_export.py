"""Every registered model goes through the export pipeline (ONNX, dynamic batch, onnx.checker) and ONNX Runtime
matches PyTorch on real images, with the static output sizes a Triton config needs.

The list comes from ``list_models()``, so models added later are covered without editing this file. Untrained
weights; models that accept smaller inputs are built at one to keep CPU time low (picanet_vgg16 also needs a GAP grid
that fits its 14×14 map at 112; picanet_lite's GAP grid needs its 224 input). A model that cannot export belongs in
``CANNOT_EXPORT`` with the reason (and in the README's model table).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.images import list_images, load_batch
from export.onnx_export import export_onnx
from export.parity import cpu_session, max_abs_diff
from export.triton import TritonSettings, render_config
from models import build_model, list_models
from training.transforms import Preprocess

torch.set_num_threads(1)

SMALL_BUILD: dict[str, dict[str, int]] = {
    "picanet_vgg16": {"input_size": 112, "global_grid": 4},
    "picanet_effl0": {"input_size": 64},
    **{
        name: {"input_size": 64}
        for name in list_models()
        if name.startswith(("class_", "arn_", "cosal_", "attnbaseline_"))
    },
}
# Export and onnx.checker only: picanet_vgg16 has 58M parameters and its ORT run adds ~15 s on 2 cores; its modules
# are the ones picanet_lite / picanet_lite_lap run through ORT here.
EXPORT_ONLY = {"picanet_vgg16"}
# Untrained ResNet-50 in eval mode (unit BatchNorm statistics) reaches saliency logits in the hundreds, where float32
# reassociation moves the sigmoid by ~6e-4; trained bundles still pass the export's own 1e-4 gate.
LOOSE_TOLERANCE = {"class_resnet50": 1e-3}
CANNOT_EXPORT: dict[str, str] = {}


def _param(name: str) -> object:
    if name in CANNOT_EXPORT:
        return pytest.param(name, marks=pytest.mark.xfail(reason=CANNOT_EXPORT[name], strict=True))
    if name in EXPORT_ONLY:
        return pytest.param(name, marks=pytest.mark.slow)
    return name


@pytest.mark.parametrize("name", [_param(n) for n in list_models()])
def test_model_exports_and_onnxruntime_matches_torch(name: str, tmp_path: Path, fixture_images: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, **SMALL_BUILD.get(name, {})).eval()
    size = model.input_size
    # Three real images in batches of 2 and 1: batch sizes other than the traced one exercise the dynamic axis.
    images = load_batch(list_images(fixture_images, limit=3), Preprocess(input_size=size))
    graph = export_onnx(model, tmp_path / f"{name}.onnx", size)
    session = cpu_session(graph.path, threads=1)
    assert session.get_inputs()[0].shape[0] == "batch"
    assert [o.name for o in session.get_outputs()] == [o.name for o in graph.outputs]
    # Triton needs every non-batch size static (EfficientNet-Lite's shape-computed SAME padding once hid them)
    render_config(name, onnx.load(str(graph.path)), TritonSettings())
    if name in EXPORT_ONLY:
        return
    diffs = max_abs_diff(graph.wrapper, session, images, batch_size=2)
    with torch.no_grad():
        expected = graph.wrapper(torch.from_numpy(images))
    for spec, reference in zip(graph.outputs, expected, strict=True):
        # Saliency and attention are probabilities/weights (bounded); embeddings of an untrained net in eval mode
        # reach large values, where float32 reassociation differences grow with them: compare relative to scale.
        scale = max(1.0, float(np.abs(reference.numpy()).max()))
        tolerance = LOOSE_TOLERANCE.get(name, 1e-4) * scale
        assert diffs[spec.name] <= tolerance, f"{name}: {spec.name} differs by {diffs[spec.name]:.3g}"
