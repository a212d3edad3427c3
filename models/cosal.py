"""Within-image co-saliency network (the paper in ../shared/papers/within_image_cosaliency.txt, Fig. 2).

A U-Net encoder/decoder with skip connections whose deepest feature ``H`` passes through a feature-sensitive block
(three 3×3 convolutions, eq. 2) before decoding. Two training-only branches read the sensitive features ``R``: an
RPN (9 anchors per location: box areas ``s²`` for three scales ``s`` × ratios 1:1, 1:2, 2:1; objectness and box
deltas) and the regional feature mapping head (RoIAlign 7×7 → fixed-length L2-normalized vector, eq. 3), trained
with a triplet loss (training/cosal_losses.py). At inference only the encoder, the block and the decoder are used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.backbones.efficientnet_lite import EfficientNetLite
from models.backbones.mobile import CompactEncoder
from models.backbones.vgg import VGG16Encoder
from models.layers import ConvBNReLU, init_weights
from models.outputs import AttentionGeometry, ModelOutput
from models.registry import register_model
from models.roi_align import RoIAlign

_PAPER = "Within-image co-saliency detection (triplet proposals, RPN + RFM)"
ANCHOR_RATIOS: tuple[tuple[int, int], ...] = ((1, 1), (1, 2), (2, 1))  # width : height
PAPER_ANCHOR_SIZES = (128.0, 256.0, 512.0)  # box sides (areas 128², 256², 512²) for images of ~512 px
_MAX_LOG_SCALE = math.log(1000.0 / 16)  # Faster R-CNN's clamp: keeps exp() of a wild prediction finite


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[tuple[int, int]] = ANCHOR_RATIOS) -> Tensor:
    """Width and height ``[len(sizes)*len(ratios), 2]`` of the anchors: area ``size²``, ``w:h`` from ``ratios``.

    Order: size-major (all ratios of the first size, then the next size).
    """
    shapes = [(size * math.sqrt(rw / rh), size * math.sqrt(rh / rw)) for size in sizes for rw, rh in ratios]
    return torch.tensor(shapes, dtype=torch.float32)


def make_anchors(
    feature_size: tuple[int, int],
    stride: int,
    sizes: Sequence[float],
    ratios: Sequence[tuple[int, int]] = ANCHOR_RATIOS,
) -> Tensor:
    """Anchor boxes ``[h*w*A, 4]`` as ``(x1, y1, x2, y2)`` in input pixels, centred on each feature cell.

    Order: row, then column, then anchor (:func:`flatten_rpn_outputs` flattens the RPN outputs the same way).
    """
    height, width = feature_size
    shapes = anchor_shapes(sizes, ratios)  # [A, 2]
    cy = (torch.arange(height, dtype=torch.float32) + 0.5) * stride
    cx = (torch.arange(width, dtype=torch.float32) + 0.5) * stride
    centres = torch.stack(torch.meshgrid(cx, cy, indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
    half = shapes / 2
    boxes = torch.cat([centres[:, :, None] - half, centres[:, :, None] + half], dim=-1)  # [h, w, A, 4]
    return boxes.reshape(-1, 4)


def encode_boxes(boxes: Tensor, anchors: Tensor) -> Tensor:
    """Regression targets of eq. (8): ``((gx-dx)/dw, (gy-dy)/dh, log(gw/dw), log(gh/dh))`` from centres and sizes."""
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_c = anchors[..., :2] + anchor_wh / 2
    box_wh = boxes[..., 2:] - boxes[..., :2]
    box_c = boxes[..., :2] + box_wh / 2
    return torch.cat([(box_c - anchor_c) / anchor_wh, torch.log(box_wh / anchor_wh)], dim=-1)


def decode_boxes(deltas: Tensor, anchors: Tensor) -> Tensor:
    """Inverse of :func:`encode_boxes`: deltas ``[..., 4]`` on ``anchors`` → ``(x1, y1, x2, y2)``."""
    anchor_wh = anchors[..., 2:] - anchors[..., :2]
    anchor_c = anchors[..., :2] + anchor_wh / 2
    centre = anchor_c + deltas[..., :2] * anchor_wh
    size = anchor_wh * torch.exp(deltas[..., 2:].clamp(max=_MAX_LOG_SCALE))
    return torch.cat([centre - size / 2, centre + size / 2], dim=-1)


def flatten_rpn_outputs(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """RPN maps ``[B,A,h,w]`` and ``[B,4A,h,w]`` → ``[B, h*w*A]`` and ``[B, h*w*A, 4]`` in anchor order."""
    batch, num_anchors, height, width = objectness.shape
    scores = objectness.permute(0, 2, 3, 1).reshape(batch, -1)
    boxes = deltas.reshape(batch, num_anchors, 4, height, width).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
    return scores, boxes


class FeatureSensitiveBlock(nn.Sequential):
    """Eq. (2) ``R = F_sensitive(H)``: three trainable 3×3 conv-BN-ReLU layers.

    Args:
        in_channels: channels of the encoder's deepest feature ``H``.
        channels: channels of ``R``.
    """

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__(
            ConvBNReLU(in_channels, channels), ConvBNReLU(channels, channels), ConvBNReLU(channels, channels)
        )


class RegionProposalHead(nn.Module):
    """Faster R-CNN's RPN head: 3×3 conv + ReLU, then per anchor an objectness logit and four box deltas.

    Args:
        channels: input channels.
        num_anchors: anchors per location (9).

    Returns (forward): objectness ``[B,A,h,w]`` and deltas ``[B,4A,h,w]``.
    """

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, num_anchors, 1)
        self.deltas = nn.Conv2d(channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        hidden = F.relu(self.conv(features))
        return self.objectness(hidden), self.deltas(hidden)


class RegionalFeatureMapping(nn.Module):
    """Eq. (3) ``V = F_RFM(R_i)``: RoIAlign 7×7 (2×2 samples per bin, averaged) → two linear layers → unit vector.

    Args:
        channels: channels of ``R``.
        stride: feature stride of ``R`` (input pixels per feature pixel).
        hidden: width of the hidden linear layer.
        embedding_dim: length of the output vector.
        pool_size: RoIAlign bins per side (7 in the paper).

    Returns (forward): ``[K, embedding_dim]`` L2-normalized vectors for ``[K,5]`` boxes in input pixels.
    """

    def __init__(self, channels: int, stride: int, hidden: int, embedding_dim: int, pool_size: int = 7) -> None:
        super().__init__()
        self.pool = RoIAlign(pool_size, spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True)
        self.mlp = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, embedding_dim)
        )

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        pooled = self.pool(features, boxes)
        return F.normalize(self.mlp(pooled.flatten(1)), dim=1)


class InstanceQualityHead(nn.Module):
    """Scores how well a candidate box frames one whole object: its predicted IoU with the best-matching object.

    A second stage after the RPN, in the spirit of Fast R-CNN's box classifier, not part of the paper: the RPN frames
    a box on almost every object, but boxes that span two touching objects, or sit shifted on one, score as high as
    the boxes on objects and win the suppression. The head reads the frozen encoder's features of the box's own crop
    with the co-saliency map inside the box and inside the box grown by half its size (``service.grouping.
    quality_inputs``): two objects in one box, an object cut by the box's edge, mass just outside it.

    Args:
        channels: channels of the crop features (plus the two map channels: ``channels + 2`` in).
        hidden: width of the convolutions and of the hidden linear layer.
        size: side of the crop feature grid.

    Returns (forward): ``[K]`` logits for ``[K, channels + 2, size, size]`` inputs.
    """

    def __init__(self, channels: int, hidden: int = 64, size: int = 10) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        reduced = (size + 1) // 2
        self.trunk = nn.Sequential(
            nn.Conv2d(channels + 2, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.score = nn.Sequential(
            nn.Flatten(),
            nn.Linear(hidden * reduced * reduced, 2 * hidden),
            nn.ReLU(inplace=True),
            nn.Linear(2 * hidden, 1),
        )

    def forward(self, inputs: Tensor) -> Tensor:
        return self.score(self.trunk(inputs)).squeeze(1)


class CoSaliencyNet(nn.Module):
    """U-Net with a feature-sensitive block, an RPN and a regional feature mapping head (Fig. 2).

    The decoder has one stage per encoder stride, deepest first; each stage concatenates the upsampled previous
    stage (the sensitive features ``R`` for the first) with the deepest encoder feature of its stride (the U-Net
    skip) and applies two 3×3 conv-BN-ReLU layers, as U-Net does; every stage emits a side output.

    Args:
        encoder: returns ``[En1, …, EnN]`` and declares ``channels`` and ``strides``.
        sensitive_channels: channels of ``R``.
        anchor_sizes: the anchor sides in input pixels (areas ``s²``; each with the three ratios).
        embedding_dim: length of the region vectors.
        rfm_hidden: hidden width of the regional feature mapping head.
        input_size: nominal square input side.
        frozen_encoder: freeze the encoder (the paper freezes its ImageNet VGG16).

    Returns (forward): ``ModelOutput`` with side outputs (coarsest first), ``embedding`` = ``R`` ``[B,C,h,w]`` and
    ``extras`` ``rpn_objectness`` ``[B,A,h,w]`` and ``rpn_deltas`` ``[B,4A,h,w]`` (``A`` = 3 ratios × sides).
    """

    def __init__(
        self,
        encoder: nn.Module,
        sensitive_channels: int,
        anchor_sizes: Sequence[float],
        embedding_dim: int = 128,
        rfm_hidden: int = 512,
        input_size: int = 224,
        frozen_encoder: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.input_size = input_size
        self.anchor_sizes = tuple(float(s) for s in anchor_sizes)
        channels: list[int] = list(encoder.channels)
        strides: list[int] = list(encoder.strides)
        self.feature_stride = strides[-1]
        self.sensitive = FeatureSensitiveBlock(channels[-1], sensitive_channels)
        # One decoder stage per distinct stride, deepest first; skip = deepest other feature at that stride. Only the
        # first stage can lack one (an encoder whose deepest stride holds a single feature): it then decodes R alone.
        stage_strides = sorted(set(strides), reverse=True)
        self.skip_indices: list[int | None] = []
        stages = []
        widths = []
        previous = sensitive_channels
        for stride in stage_strides:
            candidates = [i for i, s in enumerate(strides[:-1]) if s == stride]
            skip = max(candidates) if candidates else None
            self.skip_indices.append(skip)
            width = channels[skip] if skip is not None else previous
            in_channels = previous + (channels[skip] if skip is not None else 0)
            stages.append(nn.Sequential(ConvBNReLU(in_channels, width), ConvBNReLU(width, width)))
            widths.append(width)
            previous = width
        self.decoder = nn.ModuleList(stages)
        self.sides = nn.ModuleList(nn.Conv2d(width, 1, 1) for width in widths)
        num_anchors = len(self.anchor_sizes) * len(ANCHOR_RATIOS)
        self.rpn = RegionProposalHead(sensitive_channels, num_anchors)
        self.rfm = RegionalFeatureMapping(sensitive_channels, self.feature_stride, rfm_hidden, embedding_dim)
        init_weights(self.sensitive)
        init_weights(self.decoder)
        init_weights(self.sides)
        init_weights(self.rfm)
        self.frozen_encoder = False
        if frozen_encoder:
            self.freeze_encoder()

    def freeze_encoder(self) -> None:
        """Stop training the encoder: no gradients, and its BatchNorm statistics stay as loaded."""
        self.frozen_encoder = True
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> CoSaliencyNet:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()
        return self

    def anchors(self, feature_size: tuple[int, int] | None = None) -> Tensor:
        """Anchors ``[h*w*A, 4]`` (input pixels) for the RPN outputs of a ``feature_size`` map (default: the map of
        an ``input_size`` image), in the order of :func:`flatten_rpn_outputs`."""
        if feature_size is None:
            side = math.ceil(self.input_size / self.feature_stride)
            feature_size = (side, side)
        return make_anchors(feature_size, self.feature_stride, self.anchor_sizes)

    def attention_geometry(self) -> list[AttentionGeometry]:
        """The network returns no attention maps (the export and service contracts ask every model)."""
        return []

    def region_embeddings(self, features: Tensor, boxes: Tensor) -> Tensor:
        """Map boxes ``[K,5]`` (batch index, x1, y1, x2, y2 in input pixels) on ``R`` to unit vectors ``[K,D]``."""
        return self.rfm(features, boxes)

    def proposals(self, out: ModelOutput) -> tuple[Tensor, Tensor]:
        """The RPN's boxes ``[B, N, 4]`` (``x1, y1, x2, y2`` in input pixels, anchor order) and objectness
        probabilities ``[B, N]`` from a forward pass's outputs (what the exported graph gives the service)."""
        objectness, deltas = flatten_rpn_outputs(out.extras["rpn_objectness"], out.extras["rpn_deltas"])
        anchors = self.anchors(tuple(out.extras["rpn_objectness"].shape[-2:])).to(deltas)
        return decode_boxes(deltas, anchors), torch.sigmoid(objectness)

    def forward(self, x: Tensor) -> ModelOutput:
        return self.decode(self.encoder(x))

    def decode(self, feats: Sequence[Tensor]) -> ModelOutput:
        """Everything after the encoder, from its features ``[En1, …, EnN]``: with a frozen encoder, training can
        compute them once per image and run only this part."""
        sensitive = self.sensitive(feats[-1])
        hidden = sensitive
        sides: list[Tensor] = []
        for index, (stage, skip_index, side) in enumerate(
            zip(self.decoder, self.skip_indices, self.sides, strict=True)
        ):
            if skip_index is not None:
                skip = feats[skip_index]
                if index > 0:  # every later stage is one stride finer than the one before
                    hidden = F.interpolate(hidden, size=skip.shape[-2:], mode="bilinear", align_corners=False)
                hidden = torch.cat([hidden, skip], dim=1)
            hidden = stage(hidden)
            sides.append(side(hidden))
        objectness, deltas = self.rpn(sensitive)
        # The encoder's second-deepest feature (EfficientNet-Lite0: stage 4, 112 channels at stride 16): the service
        # can describe an instance by it, pooled under the map (service/grouping.py appearance_vectors)
        extras = {"rpn_objectness": objectness, "rpn_deltas": deltas, "appearance": feats[-2]}
        return ModelOutput(saliency=sides, embedding=sensitive, extras=extras)


def scaled_anchor_sizes(input_size: int) -> tuple[float, float, float]:
    """The paper's 128/256/512 anchor sides scaled from its ~512 px images to ``input_size``."""
    scale = input_size / 512
    return tuple(size * scale for size in PAPER_ANCHOR_SIZES)  # type: ignore[return-value]


@register_model("cosal_lite", paper=_PAPER)
def cosal_lite(input_size: int = 224, frozen_encoder: bool = False, **encoder_kwargs: object) -> CoSaliencyNet:
    """Co-saliency net on the compact encoder (R: 96 channels at stride 16, 128-d region vectors).

    Deviations from the paper (for 2 CPU cores): a MobileNetV2-style encoder trained from scratch replaces the
    frozen ImageNet VGG16, so the encoder is trainable by default; anchors keep the paper's sides relative to the
    image (56/112/224 px at 224); the regional vectors are L2-normalized (FaceNet's embedding, whose triplet loss
    the paper uses).
    """
    encoder = CompactEncoder(**encoder_kwargs)  # type: ignore[arg-type]
    return CoSaliencyNet(
        encoder,
        sensitive_channels=96,
        anchor_sizes=scaled_anchor_sizes(input_size),
        embedding_dim=128,
        rfm_hidden=256,
        input_size=input_size,
        frozen_encoder=frozen_encoder,
    )


@register_model("cosal_effl0", paper=_PAPER)
def cosal_effl0(
    input_size: int = 320,
    frozen_encoder: bool = True,
    output_stride: int = 16,
    anchor_sizes: Sequence[float] | None = None,
) -> CoSaliencyNet:
    """Co-saliency net on the frozen ImageNet EfficientNet-Lite0 encoder (the paper froze an ImageNet VGG16).

    The last stage is dilated to output stride 16, the stride of the paper's VGG16 conv5, so ``R`` (128 channels)
    is 20×20 on the 320 px scenes; U-Net decoder down to stride 2; 128-d region vectors; anchors scaled from the
    paper's 128/256/512 px on ~512 px images unless ``anchor_sizes`` (sides in input pixels) are given. Load the
    ImageNet weights with ``model.encoder.load_pretrained()`` before training. Deviations: EfficientNet-Lite0 instead
    of VGG16 (the ImageNet weights that can be had here), 320 px scenes instead of the paper's 450–1078 px images.
    """
    return CoSaliencyNet(
        EfficientNetLite("lite0", output_stride=output_stride),
        sensitive_channels=128,
        anchor_sizes=scaled_anchor_sizes(input_size) if anchor_sizes is None else anchor_sizes,
        embedding_dim=128,
        rfm_hidden=256,
        input_size=input_size,
        frozen_encoder=frozen_encoder,
    )


@register_model("cosal_vgg16", paper=_PAPER)
def cosal_vgg16(input_size: int = 224, frozen_encoder: bool = True) -> CoSaliencyNet:
    """The paper's network: plain VGG16 convolutions (Conv1…Conv5, stride 16), frozen, U-Net decoder down to
    stride 1, R with 512 channels, 128-d region vectors. Load ImageNet weights with
    ``model.encoder.load_pretrained(path)`` before training.

    Deviation: 224×224 inputs (the service's size) with the anchors scaled from the paper's 128/256/512 px on
    ~512 px images to 56/112/224 px; the paper feeds images at their own size (450–1078 px).
    """
    return CoSaliencyNet(
        VGG16Encoder(picanet=False),
        sensitive_channels=512,
        anchor_sizes=scaled_anchor_sizes(input_size),
        embedding_dim=128,
        rfm_hidden=512,
        input_size=input_size,
        frozen_encoder=frozen_encoder,
    )
