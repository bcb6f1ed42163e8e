"""`attnres demo`: a small real ablation on the embedded digits data, in a few minutes."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="resnet20 baseline vs SE vs CBAM on digits, one seed (CPU, minutes)",
        description="Train resnet20 without attention, with SE and with CBAM on the embedded "
                    "digits data (no download), print the table and write the report "
                    "under --out.")
    parser.add_argument("--out", default="runs/demo", help="report folder (default runs/demo)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default: attnres.ablation.DEMO_EPOCHS)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnres.ablation import demo

    demo(out=args.out, epochs=args.epochs)
    return 0
