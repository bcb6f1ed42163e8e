"""BAM: Bottleneck Attention Module (Park et al., BMVC 2018, arXiv:1807.06514).

    F' = F + F * M(F),   M(F) = sigmoid(Mc(F) + Ms(F))                       (eqs. 1-2)
    Mc(F) = BN(MLP(AvgPool(F)))                       -> (B, C, 1, 1)         (eq. 3)
    Ms(F) = BN(f1x1(f3x3(f3x3(f1x1(F)))))             -> (B, 1, H, W)         (eq. 4)

The paper sums the branches before the sigmoid (the authors' code multiplies them);
this follows the paper. The two 3x3 convs are dilated (d = 4), r = 16 in both branches.
"""

from __future__ import annotations

import torch
from torch import nn

from .cbam import hidden_width
from .norm import SafeBatchNorm2d
from .shapes import check_feature_map


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation,
                                   bias=False),
                         SafeBatchNorm2d(cout), nn.ReLU(inplace=True))


class BamGate(nn.Module):
    """BAM's attention map M(F) = sigmoid(Mc(F) + Ms(F)): `(B, C, H, W) -> (B, C, H, W)`."""

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4,
                 num_dilated: int = 2) -> None:
        super().__init__()
        hidden = hidden_width(channels, reduction)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, channels))
        self.channel_norm = SafeBatchNorm2d(channels)
        layers = [_conv_bn_relu(channels, hidden, 1)]
        layers += [_conv_bn_relu(hidden, hidden, 3, dilation) for _ in range(num_dilated)]
        self.spatial = nn.Sequential(*layers)
        self.spatial_out = nn.Conv2d(hidden, 1, 1, bias=False)
        self.spatial_norm = SafeBatchNorm2d(1)

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Mc: `(B, C, H, W) -> (B, C, 1, 1)` (logits, before the sigmoid)."""
        return self.channel_norm(self.channel_mlp(x.mean(dim=(2, 3)))[:, :, None, None])

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Ms: `(B, C, H, W) -> (B, 1, H, W)` (logits, before the sigmoid)."""
        return self.spatial_norm(self.spatial_out(self.spatial(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.channel_attention(x) + self.spatial_attention(x))


class BAM(nn.Module):
    """BAM block, `(B, C, H, W) -> (B, C, H, W)`: x * (1 + M(x)), reduction r = 16 and
    dilation 4 as in the paper."""

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4,
                 num_dilated: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.gate = BamGate(channels, reduction, dilation, num_dilated)

    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(self, x, self.channels)
        return x * (1 + self.gate(x))
