"""RoIAlign (He et al., "Mask R-CNN", ICCV 2017) in plain torch, with the semantics of ``torchvision.ops.roi_align``.

Bilinear interpolation factorizes over rows and columns, and the sampling points of one RoI form a regular grid,
so the pooled map of RoI ``k`` is ``Wy_k @ F_k @ Wx_kᵀ``: ``Wy_k [ph, H]`` and ``Wx_k [pw, W]`` hold the averaged
interpolation weights of the bin's sample rows and columns. Two batched matrix products replace the per-sample
gather loop of the reference CUDA/C++ kernel and stay differentiable with respect to the features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _axis_weights(start: Tensor, size: Tensor, bins: int, sampling_ratio: int, length: int) -> Tensor:
    """Averaged bilinear weights ``[K, bins, length]`` of ``sampling_ratio`` samples per bin along one axis.

    Follows torchvision's ``bilinear_interpolate``: a sample beyond ``[-1, length]`` contributes 0, one in
    ``[-1, 0)`` is clamped to 0, and one past the last pixel centre reads the last pixel.
    """
    bin_size = size / bins  # [K]
    steps = (torch.arange(sampling_ratio, dtype=start.dtype, device=start.device) + 0.5) / sampling_ratio
    offsets = torch.arange(bins, dtype=start.dtype, device=start.device)[:, None] + steps[None, :]  # [bins, S]
    coords = start[:, None, None] + offsets[None] * bin_size[:, None, None]  # [K, bins, S]
    inside = ((coords >= -1.0) & (coords <= length)).to(start.dtype)
    coords = coords.clamp(min=0.0)
    low = coords.floor().clamp(max=length - 1)
    at_edge = low >= length - 1
    frac = torch.where(at_edge, torch.zeros_like(coords), coords - low)
    low_idx = low.long()
    high_idx = torch.where(at_edge, low_idx, low_idx + 1)
    weights = coords.new_zeros((*coords.shape, length))
    weights.scatter_add_(-1, low_idx[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(-1, high_idx[..., None], (frac * inside)[..., None])
    return weights.mean(dim=2)


def roi_align(
    features: Tensor,
    boxes: Tensor,
    output_size: int | tuple[int, int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = 2,
    aligned: bool = True,
) -> Tensor:
    """Average-pool each box of ``features`` into a fixed ``output_size`` grid by bilinear sampling.

    Args:
        features: ``[B, C, H, W]`` feature maps.
        boxes: ``[K, 5]`` rows of ``(batch_index, x1, y1, x2, y2)`` in input-image coordinates.
        output_size: pooled height and width (an int for square bins).
        spatial_scale: feature pixels per input pixel (``1 / stride``).
        sampling_ratio: sample points per bin along each axis (``sampling_ratio²`` per bin); must be positive
            (torchvision's adaptive ``0`` would give every RoI its own grid and defeat vectorization).
        aligned: shift boxes by half a pixel so that box corners fall on pixel corners (torchvision ``aligned``).

    Returns:
        ``[K, C, ph, pw]`` pooled features.
    """
    if features.dim() != 4:
        raise ValueError(f"features must be [B,C,H,W], got shape {tuple(features.shape)}")
    if boxes.dim() != 2 or boxes.shape[1] != 5:
        raise ValueError(f"boxes must be [K,5] rows of (batch_index, x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be >= 1, got {sampling_ratio}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else output_size
    height, width = features.shape[-2:]
    # Sampling positions in at least float32: bf16/fp16 box coordinates would be off by up to a pixel.
    boxes = boxes.to(torch.promote_types(features.dtype, torch.float32))
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[:, i] * spatial_scale - offset for i in range(1, 5))
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        # Legacy behaviour: malformed boxes are forced to 1×1.
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    weights_y = _axis_weights(y1, roi_h, ph, sampling_ratio, height).to(features.dtype)  # [K, ph, H]
    weights_x = _axis_weights(x1, roi_w, pw, sampling_ratio, width).to(features.dtype)  # [K, pw, W]
    per_roi = features[boxes[:, 0].long()]  # [K, C, H, W]
    return weights_y[:, None] @ per_roi @ weights_x[:, None].transpose(-1, -2)


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align`.

    Args:
        output_size: pooled height and width.
        spatial_scale: feature pixels per input pixel.
        sampling_ratio: sample points per bin along each axis (2 gives the paper's four samples per bin).
        aligned: half-pixel box offset as in torchvision's ``aligned=True``.
    """

    def __init__(
        self, output_size: int | tuple[int, int], spatial_scale: float, sampling_ratio: int = 2, aligned: bool = True
    ) -> None:
        super().__init__()
        self.output_size = output_size
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        return roi_align(features, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (
            f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}"
        )
