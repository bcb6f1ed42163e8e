"""ECA: Efficient Channel Attention (Wang et al., CVPR 2020, arXiv:1910.03151).

A 1-D convolution across the pooled channel vector, kernel size k = psi(C) =
|log2(C) / gamma + b / gamma|, rounded to the nearest odd number above (eq. 12).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .cbam import check_impl
from .fused import hw_mean, use_fast_path
from .squeeze_excite import ChannelGated


def eca_kernel_size(channels: int, gamma: float = 2, b: float = 1) -> int:
    """The paper's adaptive kernel size: t = int(|(log2 C + b) / gamma|), made odd."""
    t = int(abs((math.log2(channels) + b) / gamma))
    return t if t % 2 else t + 1


class EcaGate(nn.Module):
    """Channel weights `(B, C, H, W) -> (B, C, 1, 1)`: sigmoid(conv1d_k(AvgPool(x))).
    `impl="fast"` pools by a sum (`fused.hw_mean`)."""

    def __init__(self, channels: int, gamma: float = 2, b: float = 1,
                 kernel_size: int | None = None, impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        if kernel_size is not None and (isinstance(kernel_size, bool) or kernel_size < 1
                                        or kernel_size % 2 == 0):
            raise ValueError(f"kernel_size={kernel_size!r}: must be odd, so the channel "
                             f"convolution keeps C (or None: the paper's adaptive size)")
        k = kernel_size or eca_kernel_size(channels, gamma, b)
        self.conv = nn.Conv1d(1, 1, k, padding=(k - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.impl == "fast" and use_fast_path()
        pooled = hw_mean(x) if fast else x.mean(dim=(2, 3))
        y = self.conv(pooled[:, None, :])  # (B, 1, C)
        return torch.sigmoid(y)[:, 0, :, None, None]


class EfficientChannelAttention(ChannelGated):
    """ECA block, `(B, C, H, W) -> (B, C, H, W)`, gamma = 2, b = 1 as in the paper.
    `impl`: "fast" or "reference", as for CBAM (same outputs, gradients and parameters)."""

    def __init__(self, channels: int, gamma: float = 2, b: float = 1,
                 kernel_size: int | None = None, impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        self.channels = channels
        self.gate = EcaGate(channels, gamma, b, kernel_size, impl)
