"""`attnres models`: architectures with their parameter counts, placements, presets,
attention names."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from attnres.attention import list_attention

    names = ", ".join(list_attention())  # from the attention registry
    parser = subparsers.add_parser(
        "models", help=f"list architectures, parameter counts, placements and attention "
                       f"names ({names})",
        description="Print a table of architectures and parameter counts (plain, and with "
                    "each attention module in every residual block), then the placements, "
                    f"presets and attention names ({names}) that build_model accepts.",
        formatter_class=DefaultsFormatter)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnres.attention import list_attention
    from attnres.models import list_placements, list_presets
    from attnres.models.build import model_table

    print(model_table())
    print()
    print("placements:", ", ".join(list_placements()))
    print("presets:   ", ", ".join(list_presets()))
    print("attention: ", ", ".join(list_attention()))
    return 0
