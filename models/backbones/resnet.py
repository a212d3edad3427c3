"""ResNet-50 encoder (He et al. 2016) in torchvision's layout, so torchvision ImageNet weights load by name.

Bottleneck blocks with the stride on the 3×3 convolution (torchvision's "v1.5"), as the CLASS code uses.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from models.backbones.weights import LoadReport, load_torchvision_resnet


class Bottleneck(nn.Module):
    """1×1 reduce → 3×3 (strided) → 1×1 expand ×4, with a projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int) -> None:
        super().__init__()
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
            if stride != 1 or in_channels != out_channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet with bottleneck blocks; returns the outputs of its five levels.

    Args:
        depths: bottleneck blocks per stage (``(3, 4, 6, 3)`` is ResNet-50).

    Returns (forward): ``[level1, …, level5]``: the stem after ReLU (stride 2, 64 channels) and
    ``layer1``…``layer4`` (strides 4, 8, 16, 32; 256, 512, 1024, 2048 channels).
    """

    def __init__(self, depths: tuple[int, int, int, int] = (3, 4, 6, 3)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_ch = 64
        layers = []
        for index, (width, depth) in enumerate(zip((64, 128, 256, 512), depths, strict=True)):
            blocks = []
            for j in range(depth):
                blocks.append(Bottleneck(in_ch, width, stride=2 if (j == 0 and index > 0) else 1))
                in_ch = width * Bottleneck.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.channels = [64, 256, 512, 1024, 2048]
        self.strides = [2, 4, 8, 16, 32]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        stem = self.relu(self.bn1(self.conv1(x)))
        c2 = self.layer1(self.maxpool(stem))
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        return [stem, c2, c3, c4, self.layer4(c4)]

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load torchvision ``resnet50`` ImageNet weights from a local ``.pth`` file."""
        return load_torchvision_resnet(self, path)
