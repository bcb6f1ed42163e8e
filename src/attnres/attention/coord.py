"""Coordinate Attention (Hou, Zhou, Feng, CVPR 2021, arXiv:2103.02907).

Channel attention that keeps one spatial axis each way (sec. 3.2, eqs. 4-9):

    z^h = mean over W of x               -> (B, C, H, 1)                      (eq. 4)
    z^w = mean over H of x               -> (B, C, 1, W)                      (eq. 5)
    f   = h_swish(BN(F1([z^h; z^w])))    F1: 1x1 conv C -> mip, shared       (eq. 6)
    g^h = sigmoid(Fh(f^h))               Fh: 1x1 conv mip -> C, (B, C, H, 1)  (eq. 7)
    g^w = sigmoid(Fw(f^w))               Fw: 1x1 conv mip -> C, (B, C, 1, W)  (eq. 8)
    y   = x * g^h * g^w                                                       (eq. 9)

[z^h; z^w] stacks the two descriptors along the spatial axis, (B, C, H + W, 1), and f is
split back into f^h (H rows) and f^w (W columns). mip = max(8, C // r) with r = 32, biased
1x1 convs and h_swish(t) = t * relu6(t + 3) / 6 follow the authors' code.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import SafeBatchNorm2d
from .shapes import check_feature_map


class CoordEncoder(nn.Module):
    """The shared transform f (eqs. 4-6): `(B, C, H, W) -> ((B, mip, H, 1), (B, mip, 1, W))`,
    the row and column encodings f^h and f^w."""

    def __init__(self, channels: int, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, hidden, 1, bias=bias)
        # Safe batch norm: (B, mip, H + W, 1) holds two values per channel at the least,
        # but the same module also has to trace and export like the others.
        self.norm = SafeBatchNorm2d(hidden)
        self.act = nn.Hardswish()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.shape[2]
        rows = x.mean(dim=3, keepdim=True)                      # (B, C, H, 1)
        cols = x.mean(dim=2, keepdim=True).transpose(2, 3)      # (B, C, W, 1)
        f = self.act(self.norm(self.conv(torch.cat([rows, cols], dim=2))))
        # slices, not torch.split: torch.fx cannot unpack the tuple a traced split returns
        return f[:, :, :h], f[:, :, h:].transpose(2, 3)


class CoordGate(nn.Module):
    """One direction's gate (eq. 7 or 8): sigmoid of a 1x1 conv, `(B, mip, H, 1) ->
    (B, C, H, 1)` for the rows or `(B, mip, 1, W) -> (B, C, 1, W)` for the columns."""

    def __init__(self, hidden: int, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(hidden, channels, 1, bias=bias)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(f))


class CoordinateAttention(nn.Module):
    """Coordinate attention block, `(B, C, H, W) -> (B, C, H, W)`: x * g^h * g^w.

    Args:
        channels: C.
        reduction: r; the hidden width is mip = max(min_hidden, C // r).
        min_hidden: the smallest hidden width (8 in the authors' code).
        bias: biases in the three 1x1 convs (the authors' code has them).

    `row_gate` returns g^h `(B, C, H, 1)` and `column_gate` g^w `(B, C, 1, W)`, the gates
    that the monitor and explain hook (the registry names them).
    """

    def __init__(self, channels: int, reduction: float = 32, min_hidden: int = 8,
                 bias: bool = True) -> None:
        super().__init__()
        if reduction <= 0:
            raise ValueError(f"reduction={reduction!r}: must be > 0")
        if not isinstance(min_hidden, int) or min_hidden < 1:
            raise ValueError(f"min_hidden={min_hidden!r}: must be a positive integer")
        self.channels = channels
        hidden = max(min_hidden, int(channels // reduction))
        self.encode = CoordEncoder(channels, hidden, bias)
        self.row_gate = CoordGate(hidden, channels, bias)
        self.column_gate = CoordGate(hidden, channels, bias)

    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(self, x, self.channels)
        f_rows, f_cols = self.encode(x)
        return x * self.row_gate(f_rows) * self.column_gate(f_cols)
