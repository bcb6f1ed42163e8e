"""The input check that every attention module makes, and the names its errors use.

A gate built for C channels silently broadcasting over, or crashing deep inside, a tensor of
another shape is the commonest copy-paste bug; the check costs two integer comparisons.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


def check_feature_map(module: nn.Module, x: torch.Tensor, channels: int) -> None:
    """Raise ValueError unless `x` is `(B, channels, H, W)`, naming the module's path in its
    model (see `name_attention_modules`) and both shapes."""
    if is_fx_symbolic_tracing() or torch.jit.is_tracing():  # no concrete shapes to compare
        return
    if x.dim() != 4 or x.shape[1] != channels:
        where = module.module_path or "(not in a named model)"
        raise ValueError(f"attention module {where} ({type(module).__name__}) was built for "
                         f"(B, {channels}, H, W) but got a tensor of shape {tuple(x.shape)}")


def name_attention_modules(model: nn.Module) -> nn.Module:
    """Record in each attention module of `model` its path (`layer1.0.attn`), which its
    shape errors then name; returns `model`."""
    for name, module in model.named_modules():
        if hasattr(type(module), "module_path"):
            module.module_path = name or None
    return model
