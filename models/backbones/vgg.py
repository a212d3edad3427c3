"""VGG16 encoders: PiCANet's output-stride-8 variant (En1…En6) and the plain one ARN taps (Conv1_2…Conv5_3).

PiCANet (TIP 2020, section IV-A): pool4 and pool5 get stride 1, the Conv5 block dilation 2, fc6 becomes a 3×3
convolution with 1024 channels and fc7 a 1×1 convolution with 1024 channels, so the encoder has output stride 8
(28×28 at 224×224). Each En^i is the last convolution of block i *before* its ReLU; En6 is fc7 before its ReLU.

Choices the paper leaves open, and what is done here:
- pool4/pool5 with stride 1 use a 3×3 window with padding 1 (DeepLab's choice), which keeps the map size.
- fc6 uses dilation 12, as DeepLab-LargeFOV, whose fc6 → 3×3×1024 conversion PiCANet follows ([46]);
  pretrained fc6/fc7 weights are subsampled the same way (see :mod:`models.backbones.weights`).
- DeepLab's dropout after fc6/fc7 is left out: the decoder's BatchNorm regularizes enough for saliency training.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from models.backbones.weights import LoadReport, load_torchvision_vgg16

# (block name, output channels, number of convolutions) for the five VGG16 blocks.
_BLOCKS = (("conv1", 64, 2), ("conv2", 128, 2), ("conv3", 256, 3), ("conv4", 512, 3), ("conv5", 512, 3))


class VGG16Encoder(nn.Module):
    """VGG16 feature encoder with torchvision-compatible weight loading.

    Args:
        picanet: ``True`` (default) builds PiCANet's variant: pool4/pool5 stride 1, Conv5 dilation 2, fc6/fc7
            as convolutions, six outputs at strides ``[1, 2, 4, 8, 8, 8]``. ``False`` builds plain VGG16's 13
            convolutions (as ARN uses them): five outputs at strides ``[1, 2, 4, 8, 16]``.
        fc6_dilation: dilation of the 3×3 fc6 convolution (PiCANet variant only).

    Returns (forward): pre-ReLU feature maps, shallowest first; ``channels`` and ``strides`` describe them.
    """

    def __init__(self, picanet: bool = True, fc6_dilation: int = 12) -> None:
        super().__init__()
        self.picanet = picanet
        self.blocks = nn.ModuleDict()
        in_ch = 3
        for name, width, depth in _BLOCKS:
            dilation = 2 if (picanet and name == "conv5") else 1
            self.blocks[name] = nn.ModuleList(
                nn.Conv2d(in_ch if i == 0 else width, width, 3, padding=dilation, dilation=dilation)
                for i in range(depth)
            )
            in_ch = width
        self.relu = nn.ReLU(inplace=False)
        self.pool = nn.MaxPool2d(2, 2)
        self.pool_same = nn.MaxPool2d(3, stride=1, padding=1)
        if picanet:
            self.fc6 = nn.Conv2d(512, 1024, 3, padding=fc6_dilation, dilation=fc6_dilation)
            self.fc7 = nn.Conv2d(1024, 1024, 1)
            self.channels = [64, 128, 256, 512, 512, 1024]
            self.strides = [1, 2, 4, 8, 8, 8]
        else:
            self.channels = [64, 128, 256, 512, 512]
            self.strides = [1, 2, 4, 8, 16]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for index, (name, convs) in enumerate(self.blocks.items()):
            if index > 0:
                # pool4 (before conv5) keeps the resolution in the PiCANet variant.
                x = self.pool_same(x) if (self.picanet and name == "conv5") else self.pool(x)
            for i, conv in enumerate(convs):
                x = conv(x if i == 0 else self.relu(x))
            feats.append(x)
        if self.picanet:
            x = self.fc6(self.pool_same(self.relu(x)))
            feats.append(self.fc7(self.relu(x)))
        return feats

    def load_pretrained(self, path: str | Path) -> LoadReport:
        """Load torchvision ``vgg16`` ImageNet weights from a local ``.pth`` file (see ``load_torchvision_vgg16``)."""
        return load_torchvision_vgg16(self, path)

    def torchvision_names(self) -> dict[str, str]:
        """Map this encoder's parameter names to torchvision ``vgg16`` names (``features.N.*``)."""
        names: dict[str, str] = {}
        index = 0
        for name, convs in self.blocks.items():
            for i in range(len(convs)):
                for kind in ("weight", "bias"):
                    names[f"blocks.{name}.{i}.{kind}"] = f"features.{index}.{kind}"
                index += 2  # conv, ReLU
            index += 1  # max pool
        return names
