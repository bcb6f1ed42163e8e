"""Every `--help` line states its default: `show_defaults` appends "(default: X)" to each
option whose help does not already say it; `train` takes the defaults from `TrainConfig`
and the wording of the ones that need it from `attnres.training.options_spec`.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping


def _default_of(action: argparse.Action) -> str:
    default = action.default
    if isinstance(default, bool) or (default is None and action.nargs == 0):
        return "on" if default else "off"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default)) or "none"
    return "none" if default is None else str(default)


def show_defaults(parser: argparse.ArgumentParser,
                  defaults: Mapping[str, str] | None = None) -> None:
    """Append " (default: X)" to the help of every optional argument of `parser` that does
    not mention its default; X is `defaults[dest]` when given, else the argparse default."""
    for action in parser._actions:
        if (isinstance(action, argparse._HelpAction) or action.required
                or action.help == argparse.SUPPRESS or not action.option_strings):
            continue
        if action.help and "default" in action.help:
            continue
        text = defaults[action.dest] if defaults and action.dest in defaults \
            else _default_of(action)
        note = f"default: {text}".replace("%", "%%")  # help strings are %-formatted
        action.help = f"{action.help} ({note})" if action.help else note


def show_train_defaults(parser: argparse.ArgumentParser) -> None:
    """`show_defaults` for `train`, whose options all default to None (so that a resumed run
    knows which ones were given): the defaults shown are `TrainConfig`'s."""
    from ..training import TrainConfig
    from ..training.options_spec import default_text

    defaults = {}
    for f in dataclasses.fields(TrainConfig):
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING \
            else f.default
        defaults[f.name] = default_text(f.name, value)
    show_defaults(parser, defaults)


__all__ = ["show_defaults", "show_train_defaults"]
