"""The attention registry: one entry per module, and everything the rest of attnres needs
to know about it (its kind, its gates, its implementations, its timm name, its defaults).

Training (parameter groups), pretrained loading, export (modules kept in fp32), the
monitor, explain, bench, the ablation grids, the CLI help and the parametrised tests read
these entries; none of them lists module classes of its own. Adding a module is: its file,
one `register_attention(...)` call in `attention/__init__.py`, and its tests.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..utils import closest

KINDS = ("gate", "conv")
# What a gate sub-module's output multiplies (its shape for an input (B, C, H, W)):
GATE_SHAPES = {
    "channel": "(B, C, 1, 1)",
    "spatial": "(B, 1, H, W)",
    "channel+spatial": "(B, C, H, W)",   # one joint gate (BAM)
    "row": "(B, C, H, 1)",               # one value per channel and row (coordinate attention)
    "column": "(B, C, 1, W)",            # one value per channel and column
}


@dataclass(frozen=True)
class AttentionSpec:
    """One registered attention module.

    kind: "gate" keeps the shape, `(B, C, H, W) -> (B, C, H, W)`, built as
          `cls(channels, **kwargs)`; "conv" replaces a convolution,
          `cls(in_channels, out_channels, stride=..., **kwargs)`.
    gates: sub-module path inside the module -> what that sub-module's output gates (a key
           of `GATE_SHAPES`). Those sub-modules return the gate values; the monitor hooks
           them and explain draws the spatial ones.
    impls: the values of the module's `impl=` argument ("reference" only: no such argument).
    timm_name: the `attn_layer` name of timm's equivalent module (`timm.layers.create_attn`).
    paper: short citation.
    architectures: for kind "conv", the `attnres.list_models()` names built with it (for
           messages; tests/test_attention.py checks them against the models).
    """

    name: str
    cls: type[nn.Module]
    kind: str = "gate"
    gates: dict[str, str] = field(default_factory=dict)
    impls: tuple[str, ...] = ("reference",)
    timm_name: str | None = None
    paper: str = ""
    architectures: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r}: allowed {', '.join(KINDS)}")
        bad = [k for k in self.gates.values() if k not in GATE_SHAPES]
        if bad:
            raise ValueError(f"gate kinds {bad}: allowed {', '.join(GATE_SHAPES)}")

    @property
    def defaults(self) -> dict[str, Any]:
        """The keyword arguments and their defaults (the paper's), read from the class."""
        params = list(inspect.signature(self.cls.__init__).parameters.values())[1:]
        skip = 1 if self.kind == "gate" else 2  # channels / in_channels, out_channels
        return {p.name: p.default for p in params[skip:]
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    @property
    def gate_kinds(self) -> tuple[str, ...]:
        """The distinct kinds of gate, e.g. ("channel", "spatial") for CBAM."""
        return tuple(dict.fromkeys(self.gates.values()))


_REGISTRY: dict[str, AttentionSpec] = {}


def register_attention(spec: AttentionSpec) -> AttentionSpec:
    """Add `spec` to the registry (a name may be registered once)."""
    if spec.name in _REGISTRY and _REGISTRY[spec.name].cls is not spec.cls:
        raise ValueError(f"attention {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def list_attention(kind: str | None = "gate") -> list[str]:
    """Registered names, sorted; `kind`: "gate" (the default: what `create_attention` and
    placements take), "conv", or None for all."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind={kind!r}: allowed {', '.join(KINDS)} or None")
    return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def attention_spec(name: str | type[nn.Module] | nn.Module) -> AttentionSpec:
    """The entry for a name, a registered class or an instance of one (ValueError if none)."""
    if isinstance(name, nn.Module):
        name = type(name)
    if isinstance(name, type):
        for spec in _REGISTRY.values():
            if spec.cls is name:
                return spec
        for spec in _REGISTRY.values():  # subclasses count as their registered parent
            if issubclass(name, spec.cls):
                return spec
        raise ValueError(f"{name.__name__} is not a registered attention module; registered: "
                         f"{', '.join(list_attention(None))}")
    key = str(name)
    spec = _REGISTRY.get(key) or _REGISTRY.get(key.lower())
    if spec is None:
        for candidate in _REGISTRY.values():  # class names work too ("SKConv")
            if candidate.cls.__name__.lower() == key.lower():
                return candidate
        names = list_attention(None)
        raise ValueError(f"unknown attention {name!r}{closest(key.lower(), names)}; "
                         f"allowed: {', '.join(names)}")
    return spec


def find_attention_spec(module: nn.Module) -> AttentionSpec | None:
    """The entry whose class `module` is an instance of, or None."""
    for spec in _REGISTRY.values():
        if isinstance(module, spec.cls):
            return spec
    return None


def iter_attention(model: nn.Module, kind: str | None = None
                   ) -> Iterator[tuple[str, nn.Module, AttentionSpec]]:
    """`(path, module, spec)` for every registered attention module in `model` (outermost
    only: a module inside another attention module is part of it). `kind` filters."""
    skip: str | None = None
    for path, module in model.named_modules():
        if skip is not None and (path == skip or path.startswith(skip + ".") or skip == ""):
            continue
        spec = find_attention_spec(module)
        if spec is None:
            continue
        skip = path
        if kind is None or spec.kind == kind:
            yield path, module, spec


def iter_gates(model: nn.Module) -> Iterator[tuple[str, str, nn.Module, str]]:
    """`(attention_path, gate_path, gate_module, gate_kind)` for every gate sub-module of
    every gate-kind attention module in `model` (sub-modules that are None are skipped)."""
    for path, module, spec in iter_attention(model):
        for sub, gate_kind in spec.gates.items():
            try:
                gate = module.get_submodule(sub)
            except AttributeError:
                continue
            if gate is None or isinstance(gate, nn.Identity):
                continue
            yield path, f"{path}.{sub}" if path else sub, gate, gate_kind


__all__ = ["AttentionSpec", "GATE_SHAPES", "KINDS", "attention_spec", "find_attention_spec",
           "iter_attention", "iter_gates", "list_attention", "register_attention"]
