"""Checking the keyword arguments of an attention module against its signature, before any
network is built: unknown names (with the closest valid one), wrong types (from the type
hints of the class), and values the module itself refuses (e.g. an even kernel size).
"""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from collections.abc import Mapping
from typing import Any

import torch

from ..utils import closest
from .registry import AttentionSpec, attention_spec

_TRIAL_CHANNELS = 64  # a width every gate accepts: the module's own checks run on it


def _hint_name(hint: Any) -> str:
    if hint is float:
        return "a finite number"
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type hint `hint` (the kinds of hints gates use)."""
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (collections.abc.Sequence, list, tuple):
        args = typing.get_args(hint)
        return (isinstance(value, (list, tuple)) and not isinstance(value, str)
                and (not args or all(_matches(v, args[0]) for v in value)))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)
                and math.isfinite(value))
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a hint this checker does not know: left to the module


def _hints(spec: AttentionSpec) -> dict[str, Any]:
    try:
        return typing.get_type_hints(spec.cls.__init__)
    except (NameError, TypeError):  # unresolvable annotations: the defaults' types
        return {name: type(default) for name, default in spec.defaults.items()
                if default is not None}


def check_attention_kwargs(attention: str, kwargs: Mapping[str, Any] | None, *,
                           what: str = "attention_kwargs") -> None:
    """ValueError (one line) unless `kwargs` are options `attention` takes, of the right
    types and accepted by the module (tried once on a small gate, or a small convolution
    for the "conv" kind). `what` names the option in the message."""
    if not kwargs:
        return
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"{what}={kwargs!r}: must be a mapping of option names to values")
    spec = attention_spec(attention)
    allowed = list(spec.defaults)
    hints = _hints(spec)
    for name, value in kwargs.items():
        if name not in spec.defaults:
            raise ValueError(f"{what}: {spec.name} ({spec.cls.__name__}) has no option "
                             f"{name!r}{closest(str(name), allowed)}; allowed: "
                             f"{', '.join(allowed) or 'none'}")
        hint = hints.get(name)
        if hint is not None and not _matches(value, hint):
            raise ValueError(f"{what}: {name}={value!r} for {spec.name} must be "
                             f"{_hint_name(hint)} (default {spec.defaults[name]!r})")
    widths = (_TRIAL_CHANNELS,) * (1 if spec.kind == "gate" else 2)
    try:
        with torch.device("meta"):  # the module's own checks, no memory for its weights
            spec.cls(*widths, **kwargs)
    except ValueError as e:
        raise ValueError(f"{what} for {spec.name}: {e}") from None


__all__ = ["check_attention_kwargs"]
