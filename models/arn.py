"""ARN (Sun, Li, Guan, "Self-attention Recurrent Network for Saliency Detection", arXiv:1808.01634, 2018).

A VGG16 feature extractor and the attentional recurrent network: the deepest map S5 passes through a
self-attention module (section 3.3), the side outputs L2, L3, L4 through recurrent convolutional layers (RCL,
section 3.4); each stage upsamples the previous attended map with a transposed convolution, concatenates it with
the RCL-enhanced side output, convolves and applies self-attention again. Every stage emits a side output.

Choices the paper leaves open: the ARN width C (64), a 3×3 conv-BN-ReLU after each concatenation and before S5's
attention, 3×3 RCL kernels with T = 3 recurrent steps and LRN constants (size C/8+1, alpha 0.001, beta 0.75) from
Liang and Hu's RCNN (the RCL paper ARN cites), 1×1 side-output convolutions, stride-2 4×4 transposed convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.backbones.efficientnet_lite import EfficientNetLite
from models.backbones.mobile import CompactEncoder
from models.backbones.vgg import VGG16Encoder
from models.layers import ConvBNReLU, init_weights
from models.outputs import AttentionGeometry, ModelOutput
from models.registry import register_model

_PAPER = "Self-attention recurrent network for saliency detection (Sun et al., 2018)"


class SelfAttention(nn.Module):
    """Self-attention (eq. 1–4, after SAGAN): ``y = gamma * o + x``, ``o_j = sum_i beta_{j,i} h(x_i)``.

    ``beta_{j,i}`` is the softmax over positions i of ``s_ij = f(x_i) . g(x_j)``; f and g are 1×1 convolutions
    to C/8 channels, h a 1×1 convolution to C channels; ``gamma`` starts at 0, so the module starts as identity.

    Args:
        channels: C.

    Returns (forward): ``y`` ``[B,C,H,W]`` and the attention weights ``[B,H*W,H,W]``: channel ``i`` at pixel ``j``
    is ``beta_{j,i}``, so each pixel's channels are its softmax over every position of the map (a "global"
    attention map whose grid is the whole map).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        key_channels = max(1, channels // 8)
        self.f = nn.Conv2d(channels, key_channels, 1)
        self.g = nn.Conv2d(channels, key_channels, 1)
        self.h = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, height, width = x.shape
        f, g, h = self.f(x).flatten(2), self.g(x).flatten(2), self.h(x).flatten(2)
        beta = torch.softmax(torch.bmm(g.transpose(1, 2), f), dim=-1)  # [B, N_j, N_i], rows sum to 1
        weights = beta.transpose(1, 2)  # [B, N_i, N_j]
        out = torch.bmm(h, weights)  # [B, C, N_j]
        return self.gamma * out.reshape(b, c, height, width) + x, weights.reshape(b, height * width, height, width)


class RecurrentConvLayer(nn.Module):
    """RCL (eq. 5–8): ``x(t) = LRN(ReLU(w_f * u + w_r * x(t-1) + b))`` with the same weights at every step.

    Step 0 has no recurrent input. LRN is eq. (8): ``f_k / (1 + alpha/N * sum_{k' near k} f_k'^2)^beta`` over
    N neighbouring channels.

    Args:
        in_channels: channels of the feed-forward input u.
        channels: channels of the state x.
        steps: T, recurrent steps after step 0 (the output is x(T)).
        kernel: kernel of both convolutions.
    """

    def __init__(self, in_channels: int, channels: int, steps: int = 3, kernel: int = 3) -> None:
        super().__init__()
        self.steps = steps
        self.feedforward = nn.Conv2d(in_channels, channels, kernel, padding=kernel // 2)
        self.recurrent = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        size = channels // 8 + 1
        size += 1 - size % 2  # an odd window is symmetric around channel k, as eq. (8) sums
        self.norm = nn.LocalResponseNorm(size, alpha=0.001, beta=0.75, k=1.0)

    def forward(self, u: Tensor) -> Tensor:
        drive = self.feedforward(u)  # w_f * u + b is the same at every step
        x = self.norm(torch.relu(drive))
        for _ in range(self.steps):
            x = self.norm(torch.relu(drive + self.recurrent(x)))
        return x


def make_upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A transposed convolution that multiplies the map size by ``factor`` (1, 2 or 4) exactly."""
    if factor == 1:
        return nn.ConvTranspose2d(channels, channels, 3, stride=1, padding=1)
    if factor in (2, 4):
        return nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2)
    raise ValueError(f"ARN stages must differ in stride by 1, 2 or 4; got a factor of {factor}")


class ARN(nn.Module):
    """Encoder + attentional recurrent network.

    Args:
        encoder: returns a list of feature maps and declares ``channels`` and ``strides``.
        side_levels: encoder indices of L2, L3, L4 (shallowest first).
        top_level: encoder index of S5.
        channels: C, width of the ARN.
        steps: RCL recurrent steps T.
        attention_stages: stages (5, 4, 3, 2) whose attended map goes through self-attention; the paper uses all.
        input_size: nominal square input side.
        exported_attention: attention stages whose weights ``forward`` returns (``self/s5``...): an N-position map
            answers N×N weights, so only the coarse stages are worth returning.

    Returns (forward): :class:`ModelOutput` with side outputs ``[S5, S4, S3, S2]``, logits at each stage's stride,
    and ``attention["self/s<stage>"]`` ``[B,N,h,w]``: each pixel's self-attention over the whole map.
    """

    def __init__(
        self,
        encoder: nn.Module,
        side_levels: tuple[int, int, int],
        top_level: int,
        channels: int = 64,
        steps: int = 3,
        attention_stages: Sequence[int] = (5, 4, 3, 2),
        input_size: int = 224,
        exported_attention: Sequence[int] = (5,),
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.side_levels = side_levels
        self.top_level = top_level
        self.input_size = input_size
        enc_channels: list[int] = list(encoder.channels)
        strides = [encoder.strides[i] for i in (*side_levels, top_level)]
        self.max_stride = strides[-1]
        unknown = set(attention_stages) - {2, 3, 4, 5}
        if unknown:
            raise ValueError(f"attention_stages must be among 5, 4, 3, 2; got {sorted(unknown)}")
        self.attention_stages = tuple(sorted(attention_stages, reverse=True))
        self.exported_attention = tuple(s for s in self.attention_stages if s in exported_attention)
        self.stage_strides = {stage: strides[stage - 2] for stage in (2, 3, 4, 5)}
        self.top = ConvBNReLU(enc_channels[top_level], channels, 3)
        self.rcls = nn.ModuleList(RecurrentConvLayer(enc_channels[i], channels, steps) for i in side_levels)
        self.upsamplers = nn.ModuleList(make_upsampler(channels, strides[k + 1] // strides[k]) for k in range(3))
        self.merges = nn.ModuleList(ConvBNReLU(2 * channels, channels, 3) for _ in side_levels)
        self.attention = nn.ModuleDict({str(s): SelfAttention(channels) for s in self.attention_stages})
        self.sides = nn.ModuleList(nn.Conv2d(channels, 1, 1) for _ in range(4))
        init_weights(nn.ModuleList([m for name, m in self.named_children() if name != "encoder"]))

    def attention_geometry(self) -> list[AttentionGeometry]:
        """Each exported self-attention map as a "global" grid covering the whole map (dilation 1, no offset)."""
        geometry = []
        for stage in self.exported_attention:
            stride = self.stage_strides[stage]
            side = self.input_size // stride
            geometry.append(AttentionGeometry(f"self/s{stage}", "global", side, 1, stride, 0, "softmax"))
        return geometry

    def _attend(self, stage: int, x: Tensor, attention: dict[str, Tensor]) -> Tensor:
        key = str(stage)
        if key not in self.attention:
            return x
        y, weights = self.attention[key](x)
        if stage in self.exported_attention:
            attention[f"self/s{stage}"] = weights
        return y

    def forward(self, x: Tensor) -> ModelOutput:
        if x.shape[-2] % self.max_stride or x.shape[-1] % self.max_stride:
            raise ValueError(
                f"ARN needs input sides divisible by {self.max_stride}; got {tuple(x.shape[-2:])}: "
                f"resize to the model's input_size ({self.input_size})"
            )
        feats = self.encoder(x)
        attention: dict[str, Tensor] = {}
        attended = self._attend(5, self.top(feats[self.top_level]), attention)
        sides = [self.sides[0](attended)]
        for k in reversed(range(3)):  # stages 4, 3, 2
            side = self.rcls[k](feats[self.side_levels[k]])
            merged = self.merges[k](torch.cat([self.upsamplers[k](attended), side], dim=1))
            attended = self._attend(k + 2, merged, attention)
            sides.append(self.sides[3 - k](attended))
        return ModelOutput(saliency=sides, attention=attention)


@register_model("arn_vgg16", paper=_PAPER)
def arn_vgg16(input_size: int = 224, channels: int = 64, steps: int = 3) -> ARN:
    """The paper's ARN on plain VGG16: L2, L3, L4 = Conv2_2, Conv3_3, Conv4_3; S5 = Conv5_3 (14×14 at 224)."""
    return ARN(VGG16Encoder(picanet=False), (1, 2, 3), 4, channels=channels, steps=steps, input_size=input_size)


@register_model("arn_lite", paper=_PAPER)
def arn_lite(
    input_size: int = 224,
    channels: int = 32,
    steps: int = 2,
    attention_stages: Sequence[int] = (5, 4),
    **encoder_kwargs: object,
) -> ARN:
    """ARN on the compact encoder, sized for 2 CPU cores.

    Deviations: L2, L3, L4 are the compact encoder's stride-2/4/8 stages and S5 its stride-16 head (as VGG16's
    Conv2_2…Conv5_3); C = 32; T = 2 RCL steps; self-attention only at stages 5 and 4 (14×14 and 28×28 maps):
    at stride 4 and 2 its N×N attention matrix (N = 3,136 and 12,544 positions) dominates time and memory.
    """
    encoder = CompactEncoder(**encoder_kwargs)  # type: ignore[arg-type]
    return ARN(encoder, (0, 1, 2), 5, channels, steps, attention_stages, input_size)


@register_model("arn_effl0", paper=_PAPER)
def arn_effl0(
    input_size: int = 224,
    channels: int = 64,
    steps: int = 3,
    attention_stages: Sequence[int] = (5, 4, 3),
    variant: str = "lite0",
) -> ARN:
    """ARN on the ImageNet-pretrained EfficientNet-Lite0 encoder, 224×224 input.

    L2, L3, L4 are the encoder's stride-4/8/16 levels and S5 its stride-32 level (VGG16's Conv2_2…Conv5_3 sit at
    strides 2…16: every stage here is one octave coarser, so S5 is 7×7). C = 64 and T = 3 as chosen for the paper
    model. Deviation: no self-attention at stage 2 (56×56, N = 3,136 positions: its N×N matrix would cost more
    than the rest of the network on 2 CPU cores). Stages 5 and 4 (7×7 and 14×14) return their attention weights.
    Load the ImageNet weights with ``model.encoder.load_pretrained()``.
    """
    encoder = EfficientNetLite(variant)
    return ARN(encoder, (1, 2, 3), 4, channels, steps, attention_stages, input_size, exported_attention=(5, 4))
