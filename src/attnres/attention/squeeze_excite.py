"""Squeeze-and-Excitation (Hu et al., CVPR 2018, arXiv:1709.01507).

    y = x * sigmoid(W2 relu(W1 AvgPool(x) + b1) + b2),   W1: C -> C/r,  W2: C/r -> C
"""

from __future__ import annotations

import torch
from torch import nn

from .cbam import ChannelGate, check_impl
from .fused import gate_product, use_fast_path
from .shapes import check_feature_map


class ChannelGated(nn.Module):
    """`x * self.gate(x)` with `gate: (B, C, H, W) -> (B, C, 1, 1)`; the forward shared by SE
    and ECA, which differ only in their gate."""

    channels: int
    impl: str
    gate: nn.Module
    # Residual blocks may call `attn(out, identity=identity)` to get relu(attn(out) + identity).
    folds_residual = True
    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, C, H, W) -> (B, C, H, W)`; with `identity` `(B, C, H, W)`:
        `relu(x * gate + identity)`, the gate folded into a residual block's add and ReLU."""
        check_feature_map(self, x, self.channels)
        if self.impl == "fast" and use_fast_path():
            return gate_product(x, self.gate(x), None, identity)
        out = x * self.gate(x)
        return out if identity is None else torch.relu(out + identity)

    def forward_add(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """`relu(self(x) + identity)`, through `__call__` so that hooks still run."""
        return self(x, identity=identity)


class SqueezeExcite(ChannelGated):
    """SE block, `(B, C, H, W) -> (B, C, H, W)`; reduction r = 16 and biased FC layers as in
    the paper (SE-ResNet-50: 28.09 M parameters). `impl`: "fast" or "reference", as for
    CBAM (same outputs, gradients and parameters)."""

    def __init__(self, channels: int, reduction: float = 16, bias: bool = True,
                 impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        self.channels = channels
        self.gate = ChannelGate(channels, reduction, pool_types=("avg",), mlp_bias=bias,
                                impl=impl)
