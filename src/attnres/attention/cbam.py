"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

    F'  = Mc(F) * F,   Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))      (eq. 2)
    F'' = Ms(F') * F', Ms(F) = sigmoid(conv7x7([AvgPool_c(F); MaxPool_c(F)]))   (eq. 3)

One MLP (C -> C/r -> C, ReLU) is shared by all pooled descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .norm import SafeBatchNorm2d

POOL_TYPES = ("avg", "max", "lp", "lse")
ORDERS = ("channel-first", "spatial-first", "parallel")


def hidden_width(channels: int, reduction: float) -> int:
    """Width of a reduction MLP: channels / reduction, never below 1."""
    return max(1, int(channels // reduction))


def spatial_pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """Global pooling over H, W: `(B, C, H, W) -> (B, C)`."""
    if pool_type == "avg":
        return x.mean(dim=(2, 3))
    if pool_type == "max":
        return x.amax(dim=(2, 3))
    if pool_type == "lp":  # power-2 LP pool over the whole map, as F.lp_pool2d computes it
        return x.pow(2).sum(dim=(2, 3)).sqrt()
    if pool_type == "lse":
        return torch.logsumexp(x.flatten(2), dim=2)
    raise ValueError(f"unknown pool type {pool_type!r}; allowed: {', '.join(POOL_TYPES)}")


class ChannelGate(nn.Module):
    """Channel attention weights `(B, C, H, W) -> (B, C, 1, 1)` in [0, 1]:
    sigmoid of the sum, over the pool types, of one shared MLP applied to each pooled vector.

    With `pool_types=("avg",)` and `mlp_bias=True` this is the Squeeze-and-Excitation gate.
    """

    def __init__(self, channels: int, reduction: float = 16,
                 pool_types: Sequence[str] = ("avg", "max"), mlp_bias: bool = False) -> None:
        super().__init__()
        pool_types = tuple(pool_types)
        bad = [p for p in pool_types if p not in POOL_TYPES]
        if bad or not pool_types:
            raise ValueError(f"pool_types={pool_types!r}: choose a non-empty subset of "
                             f"{', '.join(POOL_TYPES)}")
        if reduction <= 0:
            raise ValueError(f"reduction={reduction!r}: must be > 0")
        self.pool_types = pool_types
        hidden = hidden_width(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=mlp_bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One MLP call on the stacked descriptors (P, B, C), then the sum over P.
        pooled = torch.stack([spatial_pool(x, p) for p in self.pool_types])
        logits = self.fc2(self.act(self.fc1(pooled))).sum(dim=0)
        return torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial attention weights `(B, C, H, W) -> (B, 1, H, W)` in [0, 1]:
    sigmoid(conv_kxk([mean over C; max over C])), optionally with batch norm after the conv
    (`norm="batch"`, as in the authors' code, where the conv then has no bias)."""

    def __init__(self, kernel_size: int = 7, norm: str | None = None) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r}: must be odd (the paper uses 3 or 7)")
        if norm not in (None, "batch"):
            raise ValueError(f"spatial_norm={norm!r}: allowed None or 'batch'")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=norm is None)
        # momentum 0.01 as in the authors' BasicConv.
        self.norm = SafeBatchNorm2d(1, momentum=0.01) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.norm(self.conv(pooled)))


class CBAM(nn.Module):
    """Channel then spatial attention, `(B, C, H, W) -> (B, C, H, W)`.

    Args:
        channels: C.
        reduction: MLP reduction ratio r (hidden width max(1, C // r)).
        pool_types: descriptors fed to the shared MLP, subset of avg, max, lp, lse.
        kernel_size: spatial gate kernel (3 or 7 in the paper).
        order: "channel-first" (paper), "spatial-first", or "parallel" (both gates computed
            from the input and applied together, x * Mc(x) * Ms(x)).
        channel, spatial: switch either gate off for channel-only / spatial-only ablations.
        mlp_bias: biases in the MLP (the paper's formulas have none; the authors' code has).
        spatial_norm: None or "batch" (the authors' code puts BN after the spatial conv).
    """

    def __init__(self, channels: int, reduction: float = 16,
                 pool_types: Sequence[str] = ("avg", "max"), kernel_size: int = 7,
                 order: str = "channel-first", channel: bool = True, spatial: bool = True,
                 mlp_bias: bool = False, spatial_norm: str | None = None) -> None:
        super().__init__()
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: allowed {', '.join(ORDERS)}")
        if not (channel or spatial):
            raise ValueError("channel=False and spatial=False leaves CBAM with no gate")
        self.order = order
        self.channel_gate = (ChannelGate(channels, reduction, pool_types, mlp_bias)
                             if channel else None)
        self.spatial_gate = SpatialGate(kernel_size, spatial_norm) if spatial else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_gate is None:
            return x * self.spatial_gate(x)
        if self.spatial_gate is None:
            return x * self.channel_gate(x)
        if self.order == "parallel":
            return x * self.channel_gate(x) * self.spatial_gate(x)
        if self.order == "spatial-first":
            x = x * self.spatial_gate(x)
            return x * self.channel_gate(x)
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)
