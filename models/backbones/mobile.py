"""A compact MobileNetV2-style encoder sized for 2 CPU cores and training from scratch.

Design (why): inverted residual blocks give the best accuracy per FLOP on CPU; the last stage keeps stride 16
and uses dilation 2 instead of a fifth down-sampling, mirroring how PiCANet's VGG16 keeps a larger final map
(pool4/pool5 stride 1, dilated conv5) so the global attention has a 14×14 map to attend over at 224×224.
"""

from __future__ import annotations

from torch import Tensor, nn

from models.layers import ConvBNReLU, init_weights


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1×1 expand → 3×3 depthwise → 1×1 project, residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(in_channels, hidden, 1))
        layers += [
            ConvBNReLU(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden),
            ConvBNReLU(hidden, out_channels, 1, relu=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class CompactEncoder(nn.Module):
    """Five-level encoder: features at strides 2, 4, 8, 16, 16 (last stage dilated), plus a 1×1 head.

    Args:
        widths: output channels of the five stages.
        depths: inverted-residual blocks per stage (stage 1 is the stem plus its blocks).
        expand: expansion ratio of the inverted residual blocks.
        head_channels: channels of the final 1×1 convolution (the analogue of VGG's fc7).

    Returns (forward): ``[En1, En2, En3, En4, En5, En6]`` at strides ``[2, 4, 8, 16, 16, 16]``.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 24, 32, 64, 96),
        depths: tuple[int, ...] = (1, 2, 3, 3, 2),
        expand: int = 4,
        head_channels: int = 160,
    ) -> None:
        super().__init__()
        strides = (2, 2, 2, 2, 1)
        dilations = (1, 1, 1, 1, 2)
        self.stem = ConvBNReLU(3, widths[0], 3, stride=2)
        stages = []
        in_ch = widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for j in range(depth):
                stride = strides[i] if (j == 0 and i > 0) else 1
                blocks.append(InvertedResidual(in_ch, width, stride, 1 if i == 0 else expand, dilations[i]))
                in_ch = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.head = ConvBNReLU(in_ch, head_channels, 1)
        self.channels = [*widths, head_channels]
        self.strides = [2, 4, 8, 16, 16, 16]
        init_weights(self)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        feats.append(self.head(x))
        return feats
