"""PiCANet's pixel-wise contextual attention: GAP, LAP and AC (Liu, Han, Yang, TIP 2020, section III).

All three avoid ``F.unfold``: it exports to ONNX as a Gather-based im2col that dominated ONNX Runtime time
(MEASURED.md). The global grid is a strided slice and local windows are k×k shifted slices of a zero-padded
map, which compute the same numbers (the tests compare against a per-pixel loop of eq. 2, 3 and 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def shifted_windows(x: Tensor, kernel: int, dilation: int) -> list[Tensor]:
    """The ``kernel²`` neighbours of every pixel of ``x`` (zero padded), row-major over the window.

    Element ``i = r*kernel + c`` is ``x`` shifted so that pixel (h, w) holds
    ``x[h + (r - kernel//2)*dilation, w + (c - kernel//2)*dilation]`` (zero outside the map).
    """
    pad = dilation * (kernel // 2)
    padded = F.pad(x, (pad, pad, pad, pad))
    height, width = x.shape[-2], x.shape[-1]
    return [
        padded[:, :, r * dilation : r * dilation + height, c * dilation : c * dilation + width]
        for r in range(kernel)
        for c in range(kernel)
    ]


def global_grid_offset(size: int, grid: int, dilation: int) -> int:
    """First grid coordinate that centres a ``grid``-cell, ``dilation``-spaced grid on a ``size`` map."""
    span = (grid - 1) * dilation + 1
    if span > size:
        raise ValueError(
            f"a {grid}x{grid} global grid with dilation {dilation} spans {span} pixels but the feature map "
            f"is {size} wide; use a smaller grid/dilation or a larger input"
        )
    return (size - span) // 2


class ReNet(nn.Module):
    """Bidirectional LSTMs along rows, then along columns (Visin et al. 2015), so every pixel sees the map.

    Args:
        in_channels: channels of the input map.
        hidden: hidden units per direction; the output has ``2*hidden`` channels.
    """

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.rows = nn.LSTM(in_channels, hidden, batch_first=True, bidirectional=True)
        self.cols = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.out_channels = 2 * hidden

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        rows = x.permute(0, 2, 3, 1).reshape(b * h, w, c)
        rows, _ = self.rows(rows)
        cols = rows.reshape(b, h, w, self.out_channels).permute(0, 2, 1, 3).reshape(b * w, h, self.out_channels)
        cols, _ = self.cols(cols)
        return cols.reshape(b, w, h, self.out_channels).permute(0, 3, 2, 1)


class GlobalAttentionPooling(nn.Module):
    """GAP (eq. 1–2): per-pixel softmax weights over a global K×K dilated grid, then a weighted average.

    Args:
        channels: channels C of the feature map F.
        grid: K; each pixel attends to K*K grid cells (10 in the paper).
        dilation: spacing of the grid cells (3 on the paper's 28×28 map).
        hidden: ReNet hidden units per direction (256 in the paper).

    Returns (forward): ``(F_GAP [B,C,H,W], alpha [B,K*K,H,W])``; ``alpha`` sums to 1 over dim 1.
    """

    def __init__(self, channels: int, grid: int = 10, dilation: int = 3, hidden: int = 256) -> None:
        super().__init__()
        self.grid, self.dilation = grid, dilation
        self.renet = ReNet(channels, hidden)
        self.logits = nn.Conv2d(self.renet.out_channels, grid * grid, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        alpha = torch.softmax(self.logits(self.renet(x)), dim=1)
        oy = global_grid_offset(h, self.grid, self.dilation)
        ox = global_grid_offset(w, self.grid, self.dilation)
        span = (self.grid - 1) * self.dilation + 1
        cells = x[:, :, oy : oy + span : self.dilation, ox : ox + span : self.dilation]
        pooled = torch.bmm(cells.reshape(b, c, self.grid * self.grid), alpha.reshape(b, self.grid * self.grid, h * w))
        return pooled.reshape(b, c, h, w), alpha


class LocalAttentionWeights(nn.Module):
    """Convolutions whose receptive field covers the k×k dilated window, ending in k*k logits per pixel.

    The paper uses one 7×7 dilation-2 convolution to 128 channels then a 1×1; ``separable=True`` replaces
    the dense 7×7 by a depthwise 7×7 plus a pointwise convolution (same 13×13 receptive field, ~C times
    fewer FLOPs), which the CPU-sized models use.
    """

    def __init__(self, channels: int, kernel: int, dilation: int, hidden: int, separable: bool) -> None:
        super().__init__()
        pad = dilation * (kernel // 2)
        if separable:
            context: list[nn.Module] = [
                nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation, groups=channels),
                nn.Conv2d(channels, hidden, 1),
            ]
        else:
            context = [nn.Conv2d(channels, hidden, kernel, padding=pad, dilation=dilation)]
        self.net = nn.Sequential(*context, nn.ReLU(inplace=True), nn.Conv2d(hidden, kernel * kernel, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LocalAttentionPooling(nn.Module):
    """LAP (eq. 3): per-pixel softmax weights over its k×k dilated neighbourhood, then a weighted average.

    Returns (forward): ``(F_LAP [B,C,H,W], alpha [B,k*k,H,W])``; ``alpha`` sums to 1 over dim 1.
    """

    def __init__(
        self, channels: int, kernel: int = 7, dilation: int = 2, hidden: int = 128, separable: bool = False
    ) -> None:
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.weights = LocalAttentionWeights(channels, kernel, dilation, hidden, separable)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.softmax(self.weights(x), dim=1)
        windows = shifted_windows(x, self.kernel, self.dilation)
        pooled = sum(alpha[:, i : i + 1] * f for i, f in enumerate(windows))
        return pooled, alpha


class AttentionConvolution(nn.Module):
    """AC (eq. 4–5): sigmoid gates g_i on each window location inside a k×k dilated convolution.

    ``F_AC(w,h) = sum_i g_i(w,h) * f_i(w,h) W_i + b``. The kernel is stored as an ordinary
    ``[C_out, C_in, k, k]`` convolution weight and applied as one 1×1 convolution over the gated windows.

    Returns (forward): ``(F_AC [B,C_out,H,W], gates [B,k*k,H,W])`` with gates in [0, 1].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int = 7,
        dilation: int = 2,
        hidden: int = 128,
        separable: bool = False,
    ) -> None:
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.gates = LocalAttentionWeights(in_channels, kernel, dilation, hidden, separable)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gates = torch.sigmoid(self.gates(x))
        windows = shifted_windows(x, self.kernel, self.dilation)
        gated = torch.cat([gates[:, i : i + 1] * f for i, f in enumerate(windows)], dim=1)
        # [C_out, C_in, k, k] -> [C_out, k*k*C_in, 1, 1], window-major to match the concatenation order.
        out_channels = self.weight.shape[0]
        flat = self.weight.permute(0, 2, 3, 1).reshape(out_channels, -1, 1, 1)
        return F.conv2d(gated, flat, self.bias), gates
