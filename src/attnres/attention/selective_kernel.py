"""Selective Kernel convolution (Li et al., CVPR 2019, arXiv:1903.06586).

Split: M branches of grouped 3x3 convs with dilation 1..M (a dilated 3x3 stands in for
5x5, 7x7 ...). Fuse: U = sum of branches, s = AvgPool(U), z = ReLU(BN(W s)) with
d = max(C / r, L). Select: per-channel softmax over the branches, V = sum_m a_m * U_m.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import SafeBatchNorm2d
from .shapes import check_feature_map


class SKConv(nn.Module):
    """Replaces a 3x3 convolution: `(B, Cin, H, W) -> (B, Cout, H/stride, W/stride)`.

    Defaults are SKNet-50's: M = 2 branches, G = 32 groups, r = 16, L = 32.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 branches: int = 2, groups: int = 32, reduction: float = 16,
                 min_hidden: int = 32) -> None:
        super().__init__()
        if branches < 1:
            raise ValueError(f"branches={branches!r}: must be >= 1")
        self.in_channels = in_channels
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, padding=m + 1,
                                    dilation=m + 1, groups=groups, bias=False),
                          SafeBatchNorm2d(out_channels), nn.ReLU(inplace=True))
            for m in range(branches))
        hidden = max(int(out_channels // reduction), min_hidden)
        # Safe batch norm: the fuse acts on (B, C, 1, 1) vectors, one value each at batch 1.
        self.fuse = nn.Sequential(nn.Conv2d(out_channels, hidden, 1, bias=False),
                                  SafeBatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.select = nn.Conv2d(hidden, out_channels * branches, 1)

    def branch_weights(self, feats: torch.Tensor) -> torch.Tensor:
        """Softmax over branches: `(B, M, C, H, W) -> (B, M, C, 1, 1)`."""
        z = self.fuse(feats.sum(dim=1).mean(dim=(2, 3), keepdim=True))
        logits = self.select(z).view(feats.shape[0], feats.shape[1], feats.shape[2], 1, 1)
        return logits.softmax(dim=1)

    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(self, x, self.in_channels)
        feats = torch.stack([branch(x) for branch in self.branches], dim=1)
        return (feats * self.branch_weights(feats)).sum(dim=1)
