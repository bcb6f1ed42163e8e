"""Batch norm that survives a training batch with a single value per channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


class SafeBatchNorm2d(nn.BatchNorm2d):
    """`nn.BatchNorm2d` that uses its running statistics when a training batch holds only
    one value per channel (batch size 1 on 1x1 maps, or on pooled `(B, C, 1, 1)` vectors),
    where plain batch norm raises. Running statistics are not updated from such a batch.
    Input and output `(B, C, H, W)`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_fx_symbolic_tracing():  # nn.BatchNorm2d's input checks would branch on a proxy
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                self.training, self.momentum or 0.0, self.eps)
        if self.training and x.shape[0] * x.shape[2] * x.shape[3] == 1:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        return super().forward(x)
