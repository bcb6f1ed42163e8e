"""`attnres demo`: a small real ablation on the embedded digits data, in about a minute."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_threads, number


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from attnres.ablation.demo import DEMO_EPOCHS, DEMO_IMAGE_SIZE

    parser = subparsers.add_parser(
        "demo", help="resnet20 baseline vs SE vs CBAM on digits, one seed (CPU, about a "
                     "minute)",
        description=f"Train resnet20 without attention, with SE and with CBAM on the "
                    f"embedded digits data at {DEMO_IMAGE_SIZE} px (no download), print the "
                    f"table and write the report under --out.",
        formatter_class=DefaultsFormatter)
    parser.add_argument("--out", default="runs/demo", help="folder for the runs and report")
    parser.add_argument("--epochs", type=number, default=DEMO_EPOCHS,
                        help="epochs per run (a fraction runs that share of an epoch)")
    add_threads(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnres.ablation import demo

    demo(out=args.out, epochs=args.epochs, threads=args.threads)
    return 0
