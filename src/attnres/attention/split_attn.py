"""Split-attention convolution of ResNeSt (Zhang et al., 2020, arXiv:2004.08955).

One grouped conv produces `radix` splits per cardinal group; their sum is pooled, passed
through a two-layer MLP, and an r-softmax across the splits (sigmoid when radix = 1)
weights each split per channel before they are summed.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import SafeBatchNorm2d
from .shapes import check_feature_map


class SplitAttnConv2d(nn.Module):
    """Replaces a kxk convolution: `(B, Cin, H, W) -> (B, Cout, H', W')`.

    Defaults are ResNeSt's: radix 2, cardinality (`groups`) 1, reduction 4, hidden >= 32.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int | None = None, dilation: int = 1,
                 groups: int = 1, radix: int = 2, reduction: float = 4,
                 min_hidden: int = 32) -> None:
        super().__init__()
        if radix < 1:
            raise ValueError(f"radix={radix!r}: must be >= 1")
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.radix, self.groups, self.out_channels = radix, groups, out_channels
        self.in_channels = in_channels
        self.conv = nn.Conv2d(in_channels, out_channels * radix, kernel_size, stride, padding,
                              dilation, groups=groups * radix, bias=False)
        self.bn0 = SafeBatchNorm2d(out_channels * radix)
        self.act0 = nn.ReLU(inplace=True)
        hidden = max(int(in_channels * radix // reduction), min_hidden)
        self.fc1 = nn.Conv2d(out_channels, hidden, 1, groups=groups)
        self.bn1 = SafeBatchNorm2d(hidden)  # acts on (B, C, 1, 1): one value each at batch 1
        self.act1 = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, out_channels * radix, 1, groups=groups)

    def split_weights(self, splits: torch.Tensor) -> torch.Tensor:
        """r-softmax: `(B, R, C, H, W) -> (B, R, C, 1, 1)` weights of each split."""
        b = splits.shape[0]
        z = self.act1(self.bn1(self.fc1(splits.sum(dim=1).mean(dim=(2, 3), keepdim=True))))
        logits = self.fc2(z)  # (B, R*C, 1, 1), ordered (group, radix, channel-in-group)
        if self.radix == 1:
            return torch.sigmoid(logits).view(b, 1, self.out_channels, 1, 1)
        logits = logits.view(b, self.groups, self.radix, -1).transpose(1, 2)
        return logits.softmax(dim=1).reshape(b, self.radix, self.out_channels, 1, 1)

    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(self, x, self.in_channels)
        y = self.act0(self.bn0(self.conv(x)))
        splits = y.view(y.shape[0], self.radix, self.out_channels, y.shape[2], y.shape[3])
        return (splits * self.split_weights(splits)).sum(dim=1)
