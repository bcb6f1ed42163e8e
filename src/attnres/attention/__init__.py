"""Attention modules by name.

Gates keep the shape, `(B, C, H, W) -> (B, C, H, W)`, and are made by
`create_attention(name, channels, **kwargs)`. `SKConv` and `SplitAttnConv2d` replace a
convolution instead, and are used by the `skresnet50` and `resnest50` architectures.
"""

from __future__ import annotations

import difflib
from typing import Any

from torch import nn

from .bam import BAM, BamGate
from .cbam import CBAM, ChannelGate, SpatialGate
from .eca import EcaGate, EfficientChannelAttention
from .norm import SafeBatchNorm2d
from .shapes import check_feature_map, name_attention_modules
from .selective_kernel import SKConv
from .split_attn import SplitAttnConv2d
from .squeeze_excite import SqueezeExcite

ATTENTION: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttention,
    "cbam": CBAM,
    "bam": BAM,
}


def list_attention() -> list[str]:
    """Names accepted by `create_attention`."""
    return sorted(ATTENTION)


def closest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or ''."""
    match = difflib.get_close_matches(str(name), choices, n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def attention_class(name: str | type[nn.Module]) -> type[nn.Module]:
    """The class registered under `name` (a class is returned as it is)."""
    if isinstance(name, type):
        return name
    key = str(name).lower()
    if key not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}{closest(key, list_attention())}; "
                         f"allowed: {', '.join(list_attention())}")
    return ATTENTION[key]


def create_attention(name: str | type[nn.Module], channels: int, **kwargs: Any) -> nn.Module:
    """A gate for `channels` channels: `(B, C, H, W) -> (B, C, H, W)`.

    `name` is one of `list_attention()` or a module class taking `channels` first;
    keyword arguments go to the module (for example `reduction=8` or `kernel_size=3`).
    """
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels={channels!r}: must be a positive integer")
    return attention_class(name)(channels, **kwargs)


__all__ = [
    "ATTENTION", "BAM", "BamGate", "CBAM", "ChannelGate", "EcaGate", "EfficientChannelAttention",
    "SKConv", "SafeBatchNorm2d", "SpatialGate", "SplitAttnConv2d", "SqueezeExcite",
    "attention_class", "check_feature_map", "create_attention", "list_attention",
    "name_attention_modules",
]
