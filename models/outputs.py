"""The typed output contract every model's ``forward`` returns (ARCHITECTURE.md, "Model outputs")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor


@dataclass
class ModelOutput:
    """What a saliency model returns.

    Attributes:
        saliency: side outputs as logits ``[B,1,h,w]``, coarsest first, finest last. Deep supervision uses
            all of them; inference uses ``saliency[-1]``.
        attention: named attention maps, e.g. ``global`` ``[B,K*K,h,w]`` (GAP softmax weights),
            ``local/<level>`` ``[B,k*k,h,w]`` (LAP softmax or AC sigmoid gates), ``spatial/<level>``
            ``[B,1,h,w]`` (image-level maps).
        embedding: per-pixel features ``[B,C,h,w]`` (co-saliency models), else ``None``.
        extras: further named tensors a model's loss needs (RPN objectness and box deltas, ...).
    """

    saliency: list[Tensor]
    attention: dict[str, Tensor] = field(default_factory=dict)
    embedding: Tensor | None = None
    extras: dict[str, Tensor] = field(default_factory=dict)

    @property
    def final(self) -> Tensor:
        """The finest saliency logits, ``[B,1,h,w]``."""
        return self.saliency[-1]


@dataclass(frozen=True)
class AttentionGeometry:
    """How the weights of one attention output sit on the feature map, so a client can place them on the image.

    Attributes:
        name: key in ``ModelOutput.attention``.
        kind: ``global`` (the same K×K grid for every pixel), ``local`` (a k×k window centred on the pixel)
            or ``spatial`` (one value per pixel).
        grid: K (``grid*grid`` weights per pixel); 1 for spatial maps.
        dilation: step between grid cells, in feature pixels.
        stride: feature stride relative to the network input (input pixels per feature pixel).
        offset: for ``global`` grids, the feature coordinate of the first grid cell (row and column).
        normalization: ``softmax`` (weights sum to 1 per pixel), ``sigmoid`` (independent gates in [0,1])
            or ``none``.
    """

    name: str
    kind: Literal["global", "local", "spatial"]
    grid: int
    dilation: int
    stride: int
    offset: int = 0
    normalization: Literal["softmax", "sigmoid", "none"] = "softmax"
