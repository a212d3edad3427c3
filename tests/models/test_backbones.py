"""VGG16 / ResNet-50 encoders: geometry, pre-ReLU taps, and loading torchvision-format ImageNet state dicts.

torchvision is not installed; the state dicts are built here with torchvision's exact key names and shapes.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch import Tensor

from models.backbones.resnet import ResNetEncoder
from models.backbones.vgg import VGG16Encoder

torch.set_num_threads(1)

# torchvision.models.vgg16().features: (index, in, out) of its 13 convolutions.
VGG16_CONVS = [
    (0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256),
    (17, 256, 512), (19, 512, 512), (21, 512, 512), (24, 512, 512), (26, 512, 512), (28, 512, 512),
]  # fmt: skip


def torchvision_vgg16_state(with_classifier: bool = True) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(0)
    state: dict[str, Tensor] = {}
    for index, cin, cout in VGG16_CONVS:
        state[f"features.{index}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen)
        state[f"features.{index}.bias"] = torch.randn(cout, generator=gen)
    if with_classifier:
        # arange is ~50x faster than randn for these 120M values and still tells every early element apart.
        for index, cin, cout in ((0, 25088, 4096), (3, 4096, 4096), (6, 4096, 1000)):
            state[f"classifier.{index}.weight"] = torch.arange(cout * cin, dtype=torch.float32).reshape(cout, cin)
            state[f"classifier.{index}.bias"] = torch.randn(cout, generator=gen)
    return state


def torchvision_resnet50_state() -> dict[str, Tensor]:
    """torchvision ``resnet50`` keys, without ``num_batches_tracked`` like the original ImageNet checkpoint."""
    gen = torch.Generator().manual_seed(0)
    state: dict[str, Tensor] = {}

    def bn(prefix: str, n: int) -> None:
        for name in ("weight", "bias", "running_mean"):
            state[f"{prefix}.{name}"] = torch.randn(n, generator=gen)
        state[f"{prefix}.running_var"] = torch.rand(n, generator=gen) + 0.5

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=gen)
    bn("bn1", 64)
    in_ch = 64
    for layer, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), strict=True), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            state[f"{p}.conv1.weight"] = torch.randn(width, in_ch, 1, 1, generator=gen)
            bn(f"{p}.bn1", width)
            state[f"{p}.conv2.weight"] = torch.randn(width, width, 3, 3, generator=gen)
            bn(f"{p}.bn2", width)
            state[f"{p}.conv3.weight"] = torch.randn(4 * width, width, 1, 1, generator=gen)
            bn(f"{p}.bn3", 4 * width)
            if block == 0:
                state[f"{p}.downsample.0.weight"] = torch.randn(4 * width, in_ch, 1, 1, generator=gen)
                bn(f"{p}.downsample.1", 4 * width)
            in_ch = 4 * width
    state["fc.weight"] = torch.randn(1000, 2048, generator=gen)
    state["fc.bias"] = torch.randn(1000, generator=gen)
    return state


def test_picanet_vgg16_geometry_and_pre_relu_taps() -> None:
    encoder = VGG16Encoder(picanet=True).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == encoder.channels == [64, 128, 256, 512, 512, 1024]
    assert [64 // f.shape[-1] for f in feats] == encoder.strides == [1, 2, 4, 8, 8, 8]
    assert all((f < 0).any() for f in feats)  # taken before the ReLU, as the paper says
    assert all(c.dilation == (2, 2) for c in encoder.blocks["conv5"])
    assert encoder.fc6.kernel_size == (3, 3) and encoder.fc6.out_channels == 1024
    assert encoder.fc7.kernel_size == (1, 1) and encoder.fc7.out_channels == 1024


def test_plain_vgg16_has_stride_16_and_no_fc() -> None:
    encoder = VGG16Encoder(picanet=False).eval()
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    assert [64 // f.shape[-1] for f in feats] == encoder.strides == [1, 2, 4, 8, 16]
    assert not hasattr(encoder, "fc6")


def test_resnet50_levels() -> None:
    encoder = ResNetEncoder().eval()
    assert sum(p.numel() for p in encoder.parameters()) == 23_508_032  # torchvision resnet50 minus its fc
    with torch.no_grad():
        feats = encoder(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == encoder.channels == [64, 256, 512, 1024, 2048]
    assert [64 // f.shape[-1] for f in feats] == encoder.strides == [2, 4, 8, 16, 32]


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Tensor]]:
    """One torchvision-layout vgg16 file (528 MB, mostly fc6) shared by the tests that read it."""
    state = torchvision_vgg16_state()
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(state, path)
    return path, state


def test_load_torchvision_vgg16_into_picanet_encoder(
    vgg16_file: tuple[Path, dict[str, Tensor]], caplog: pytest.LogCaptureFixture
) -> None:
    path, state = vgg16_file
    encoder = VGG16Encoder(picanet=True)
    with caplog.at_level(logging.INFO, logger="models.backbones.weights"):
        report = encoder.load_pretrained(path)
    assert report.missing == []
    assert report.unexpected == ["classifier.6.bias", "classifier.6.weight"]
    assert "classifier.6.weight" in caplog.text
    torch.testing.assert_close(encoder.blocks["conv1"][0].weight, state["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(encoder.blocks["conv3"][2].bias, state["features.14.bias"], rtol=0, atol=0)
    torch.testing.assert_close(encoder.blocks["conv5"][2].weight, state["features.28.weight"], rtol=0, atol=0)
    # DeepLab's decimation: fc6 filter o, input channel c, tap (r, s) comes from fc6 unit 4o at (3r, 3s).
    fc6 = state["classifier.0.weight"].reshape(4096, 512, 7, 7)
    assert encoder.fc6.weight[5, 7, 1, 2] == fc6[20, 7, 3, 6]
    assert encoder.fc6.bias[5] == state["classifier.0.bias"][20]
    assert encoder.fc7.weight[3, 9, 0, 0] == state["classifier.3.weight"][12, 36]


def test_load_torchvision_vgg16_into_plain_encoder_reports_fc_unused(
    vgg16_file: tuple[Path, dict[str, Tensor]],
) -> None:
    report = VGG16Encoder(picanet=False).load_pretrained(vgg16_file[0])
    assert report.missing == [] and len(report.loaded) == 26
    assert report.unexpected == sorted(f"classifier.{i}.{k}" for i in (0, 3, 6) for k in ("bias", "weight"))


def test_vgg16_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    state = torchvision_vgg16_state(with_classifier=False)
    state["features.7.weight"] = torch.randn(128, 64, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"blocks\.conv2\.1\.weight"):
        VGG16Encoder().load_pretrained(path)


@pytest.fixture(scope="module")
def resnet50_state() -> dict[str, Tensor]:
    return torchvision_resnet50_state()


def test_load_torchvision_resnet50(tmp_path: Path, resnet50_state: dict[str, Tensor]) -> None:
    state = resnet50_state
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    encoder = ResNetEncoder()
    report = encoder.load_pretrained(path)
    assert report.missing == [] and report.unexpected == ["fc.bias", "fc.weight"]
    assert len(report.loaded) == len(state) - 2
    own = encoder.state_dict()
    for key, value in state.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)


def test_missing_keys_are_reported_and_wrong_files_refused(tmp_path: Path, resnet50_state: dict[str, Tensor]) -> None:
    state = dict(resnet50_state)
    del state["layer4.2.conv3.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    assert ResNetEncoder().load_pretrained(path).missing == ["layer4.2.conv3.weight"]
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"something.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="no tensor matched"):
        ResNetEncoder().load_pretrained(unrelated)
    with pytest.raises(FileNotFoundError):
        ResNetEncoder().load_pretrained(tmp_path / "absent.pth")
