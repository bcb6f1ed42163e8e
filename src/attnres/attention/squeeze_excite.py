"""Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507).

    y = x * sigmoid(W2 relu(W1 AvgPool(x) + b1) + b2),   W1: C -> C/r,  W2: C/r -> C
"""

from __future__ import annotations

import torch
from torch import nn

from .cbam import ChannelGate


class SqueezeExcite(nn.Module):
    """SE block, `(B, C, H, W) -> (B, C, H, W)`; reduction r = 16 and biased FC layers as in
    the paper (SE-ResNet-50: 28.09 M parameters)."""

    def __init__(self, channels: int, reduction: float = 16, bias: bool = True) -> None:
        super().__init__()
        self.gate = ChannelGate(channels, reduction, pool_types=("avg",), mlp_bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)
