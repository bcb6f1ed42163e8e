"""Command line: argument parsing only; every command calls a public function.

Each command lives in `attnres/cli/<command>.py` with `add_parser(subparsers)`, which
registers the sub-command and sets `func` to a function taking the parsed arguments.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from ..attention import closest

COMMANDS = ["models", "train", "eval", "ablate", "report", "demo", "explain", "bench",
            "profile", "export"]


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


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
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"attnres {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"attnres {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
