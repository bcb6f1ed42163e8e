"""What several commands share: `--threads`, numbers that may be whole or fractional, and
the help formatter that shows every option's default.

    add_threads(parser)     the one `--threads N` option (default: torch's own count,
                            which in a fresh process is every core it may use)
    apply_threads(args)     torch.set_num_threads(args.threads) when given; sets
                            args.threads to the count in use and returns it
    @with_threads           a command's run(args) with its --threads applied, and torch's
                            thread count restored after it (in-process callers and tests)
    add_amp(parser)         `--amp PRECISION` (default auto) and `--no-amp` (fp32)
    add_table_rows(parser)  `--baseline NAME` and `--reuse FOLDER:CONFIG=ROW,...` (ablate, report)
    gate_names()            "bam, cbam, ..." from the attention registry, for help lines
    number("3") -> 3, number("0.5") -> 0.5
    DefaultsFormatter       help lines end in "(default: ...)" unless they say it already
"""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from typing import Any


def default_threads() -> int:
    """The thread count a command uses without --threads: torch's own, which in a fresh
    process is every core the process may use (its physical cores on SMT machines), and is
    left as it is for a caller that set it."""
    import torch

    return torch.get_num_threads()


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"CPU threads for PyTorch (default: torch's own, every core of "
                             f"this process: {default_threads()} here)")


AMP_HELP = ("auto, bf16, fp16 (CUDA) or fp32; auto is bf16 on CUDA (fp16 where the GPU has "
            "no bf16) and on a CPU with native bf16 (amx_bf16 / avx512_bf16), else fp32")


def add_amp(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """`--amp [PRECISION]` (alone: auto) and `--no-amp` (fp32), into `args.amp`; `default`
    None lets the caller tell an option left out (train and ablate's recipes)."""
    shown = default or "the recipe's, else auto"
    parser.add_argument("--amp", nargs="?", const="auto", default=default, metavar="PRECISION",
                        help=f"{AMP_HELP} (default: {shown})")
    parser.add_argument("--no-amp", dest="amp", action="store_const", const="fp32",
                        help="fp32 throughout, the same as --amp fp32 (default: off)")


def gate_names() -> str:
    """The registered gate modules, "bam, cbam, ..." (the registry's, never a copy)."""
    from ..attention import list_attention

    return ", ".join(list_attention("gate"))


def add_table_rows(parser: argparse.ArgumentParser) -> None:
    """The options of which rows a results table has: `--reuse` (repeatable) and
    `--baseline`, the same for `attnres ablate` and `attnres report`."""
    parser.add_argument("--reuse", action="append", default=[],
                        metavar="FOLDER:CONFIG=ROW,...",
                        help="rows taken from another results folder (ablate: instead of "
                             "training them), "
                             "e.g. docs/results/modules:baseline=none,cbam=all; repeat for "
                             "more (default: none)")
    parser.add_argument("--baseline", default=None, metavar="NAME",
                        help="row the differences are taken to (default: 'baseline', else "
                             "the row without attention)")


def apply_threads(args: argparse.Namespace) -> int:
    """Set torch's thread count to `args.threads` (None: leave `default_threads()`); store
    the count in use in `args.threads` and return it."""
    import torch

    threads = default_threads() if args.threads is None else args.threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"--threads {threads!r}: must be a positive integer")
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    args.threads = threads
    return threads


def with_threads(run: Callable[[argparse.Namespace], Any]
                 ) -> Callable[[argparse.Namespace], Any]:
    """`run(args)` under `apply_threads(args)`, torch's thread count restored afterwards."""
    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> Any:
        import torch

        before = torch.get_num_threads()
        apply_threads(args)
        try:
            return run(args)
        finally:
            torch.set_num_threads(before)
    return wrapper


def number(text: str) -> int | float:
    """An argparse type: "3" -> 3, "0.5" -> 0.5 (whole numbers stay int)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    return int(value) if value.is_integer() else value


class DefaultsFormatter(argparse.HelpFormatter):
    """Each option's help ends with its default, unless the help already names one:
    "(default: X)", "(default: off)" for flags, nothing for required options."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or "required" in text.lower() or action.required
                or not action.option_strings or action.default is argparse.SUPPRESS):
            return text
        if isinstance(action, argparse.BooleanOptionalAction):
            return f"{text} (default: {'on' if action.default else 'off'})"
        if action.nargs == 0:  # store_true / store_false
            return f"{text} (default: {'on' if action.default else 'off'})"
        default: Any = action.default
        if default is None or default == [] or default == "":
            return f"{text} (default: none)"
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        return f"{text} (default: {str(shown).replace('%', '%%')})"


__all__ = ["AMP_HELP", "DefaultsFormatter", "add_amp", "add_table_rows", "add_threads",
           "apply_threads", "default_threads", "gate_names", "number", "with_threads"]
