"""Attention maps from the gates the attention registry names: which gates of a model vary
over positions, and how their outputs become one `(B, 1, h, w)` map per module.

Gate kinds (`attention.registry.GATE_SHAPES`) that vary over positions: spatial
`(B, 1, h, w)` (CBAM), channel+spatial `(B, C, h, w)` (BAM), row `(B, C, h, 1)` and
column `(B, C, 1, w)` (coordinate attention). A module's map is the product of its such
gates, broadcast to the module's input shape `(B, C, h, w)`, averaged over channels: the
mean over channels of the factor by which its spatial gates scale each position. Channel
gates `(B, C, 1, 1)`, constant over positions, are left out. Found by gate kind through
`attention.iter_gates`, so a newly registered module needs nothing here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..attention import attention_spec, iter_gates, list_attention

SPATIAL_GATE_KINDS = ("spatial", "channel+spatial", "row", "column")


def spatial_gates(model: nn.Module) -> dict[str, list[tuple[str, nn.Module]]]:
    """`{attention module name: [(gate kind, gate module), ...]}` for every attention module
    in `model` with gates of a `SPATIAL_GATE_KINDS` kind, in `named_modules()` order."""
    found: dict[str, list[tuple[str, nn.Module]]] = {}
    for path, _, gate, kind in iter_gates(model):
        if path and kind in SPATIAL_GATE_KINDS:
            found.setdefault(path, []).append((kind, gate))
    return found


def spatial_attention_names() -> list[str]:
    """Registered attention names whose modules have a spatial-kind gate (explain draws
    their maps)."""
    return [name for name in list_attention()
            if set(attention_spec(name).gate_kinds) & set(SPATIAL_GATE_KINDS)]


def attention_map(gates: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """The product of gate outputs broadcast to `shape` `(B, C, h, w)`, averaged over
    channels: `(B, 1, h, w)`. Gates `(B, 1, h, w)`, `(B, C, h, w)`, `(B, C, h, 1)`,
    `(B, C, 1, w)` in any combination."""
    product = gates[0]
    for gate in gates[1:]:
        product = product * gate
    # The channel mean of the broadcast product: a gate with one channel is its own mean.
    batch, _, height, width = shape
    return torch.broadcast_to(product.mean(dim=1, keepdim=True), (batch, 1, height, width))


__all__ = ["SPATIAL_GATE_KINDS", "attention_map", "spatial_attention_names", "spatial_gates"]
