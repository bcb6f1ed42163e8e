"""Attention modules by name.

Gates keep the shape, `(B, C, H, W) -> (B, C, H, W)`, and are made by
`create_attention(name, channels, **kwargs)`. `SKConv` and `SplitAttnConv2d` replace a
convolution instead, and are used by the `skresnet50` and `resnest50` architectures.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .bam import BAM, BamGate
from .cbam import CBAM, ChannelGate, SpatialGate
from .coord import CoordinateAttention
from .eca import EcaGate, EfficientChannelAttention
from .norm import SafeBatchNorm2d
from .shapes import check_feature_map, name_attention_modules
from .selective_kernel import SKConv
from .split_attn import SplitAttnConv2d
from ..utils import closest
from .squeeze_excite import SqueezeExcite
from .kwargs import check_attention_kwargs
from .registry import (AttentionSpec, attention_spec, find_attention_spec, iter_attention,
                       iter_gates, list_attention, register_attention)

register_attention(AttentionSpec(
    "se", SqueezeExcite, gates={"gate": "channel"}, impls=("fast", "reference"),
    timm_name="se", paper="Hu et al., CVPR 2018"))
register_attention(AttentionSpec(
    "eca", EfficientChannelAttention, gates={"gate": "channel"}, impls=("fast", "reference"),
    timm_name="eca", paper="Wang et al., CVPR 2020"))
register_attention(AttentionSpec(
    "cbam", CBAM, gates={"channel_gate": "channel", "spatial_gate": "spatial"},
    impls=("fast", "reference", "triton"), timm_name="cbam", paper="Woo et al., ECCV 2018"))
register_attention(AttentionSpec(
    "bam", BAM, gates={"gate": "channel+spatial"}, impls=("fast", "reference"),
    paper="Park et al., BMVC 2018"))
register_attention(AttentionSpec(
    "coord", CoordinateAttention, gates={"row_gate": "row", "column_gate": "column"},
    timm_name="coord", paper="Hou, Zhou, Feng, CVPR 2021"))
register_attention(AttentionSpec(
    "sk", SKConv, kind="conv", timm_name=None, paper="Li et al., CVPR 2019",
    architectures=("skresnet50",)))
register_attention(AttentionSpec(
    "splat", SplitAttnConv2d, kind="conv", paper="Zhang et al., CVPRW 2022 (ResNeSt)",
    architectures=("resnest50",)))

# name -> class of every gate module (kept for callers of attnres <= 0.1)
ATTENTION: dict[str, type[nn.Module]] = {n: attention_spec(n).cls for n in list_attention()}


def attention_class(name: str | type[nn.Module]) -> type[nn.Module]:
    """The class registered under `name` (a class is returned as it is)."""
    if isinstance(name, type):
        return name
    return attention_spec(name).cls


def create_attention(name: str | type[nn.Module], channels: int, **kwargs: Any) -> nn.Module:
    """A gate for `channels` channels: `(B, C, H, W) -> (B, C, H, W)`.

    `name` is one of `list_attention()` or a module class taking `channels` first;
    keyword arguments go to the module (for example `reduction=8` or `kernel_size=3`).
    """
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels={channels!r}: must be a positive integer")
    if isinstance(name, type):
        return name(channels, **kwargs)
    spec = attention_spec(name)
    if spec.kind != "gate":
        raise ValueError(f"attention {name!r} replaces a convolution (kind 'conv'): build it "
                         f"as {spec.cls.__name__}(in_channels, out_channels, ...) or use the "
                         f"architectures made with it ({', '.join(spec.architectures)}); gates: "
                         f"{', '.join(list_attention())}")
    return spec.cls(channels, **kwargs)


__all__ = [
    "ATTENTION", "BAM", "BamGate", "CBAM", "ChannelGate", "CoordinateAttention", "EcaGate",
    "EfficientChannelAttention", "SKConv", "SafeBatchNorm2d", "SpatialGate", "SplitAttnConv2d",
    "SqueezeExcite",
    "AttentionSpec", "attention_class", "attention_spec", "check_attention_kwargs",
    "check_feature_map", "closest",
    "create_attention", "find_attention_spec", "iter_attention", "iter_gates",
    "list_attention", "name_attention_modules", "register_attention",
]
