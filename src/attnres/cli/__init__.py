"""Command line: argument parsing only; every command calls a public function.

Each command lives in `attnres/cli/<command>.py` with `add_parser(subparsers)`, which
registers the sub-command and sets `func` to a function taking the parsed arguments.
`main` turns SIGINT / SIGTERM into exceptions for its whole run and every expected failure
into one line and an exit status (`cli.errors`); the commands handle none themselves.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..interrupts import raising_signals
from ..utils import closest
from .errors import UsageError, run_command

COMMANDS = ["models", "train", "eval", "predict", "ablate", "report", "demo", "explain",
            "bench", "profile", "export"]


class Parser(argparse.ArgumentParser):
    """Prints bad arguments as one line (no usage dump), with the closest valid choice."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = re.search(r"invalid choice: '?([^' ]+)'? \(choose from (.*)\)", message)
        if m:
            choices = [c.strip(" '\"") for c in m.group(2).split(",")]
            message += closest(m.group(1), choices)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="attnres",
        description="Attention modules (CBAM, SE, ECA, BAM, SK, split attention) in "
                    "ResNet-family networks: models, training, ablations, analysis, export.")
    from .._version import __version__

    parser.add_argument("--version", action="version", version=f"attnres {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:  # imported here so that `attnres --help` stays fast
        importlib.import_module(f"attnres.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; its exit status: 0, 2 for a one-line error (see `cli.errors`), 130
    after SIGINT, 143 after SIGTERM."""
    with raising_signals():
        argv = sys.argv[1:] if argv is None else list(argv)
        command = next((a for a in argv if a in COMMANDS), None)
        prog = f"attnres {command}" if command else "attnres"

        def dispatch() -> int | None:
            args = build_parser().parse_args(argv)
            return args.func(args)

        return run_command(prog, dispatch)


__all__ = ["COMMANDS", "Parser", "UsageError", "build_parser", "main"]


if __name__ == "__main__":
    sys.exit(main())
