"""`attnres report`: the tables of a results folder, from its files alone."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_table_rows


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="regenerate the Markdown/CSV table and plot of a results folder",
        description="Read DIR/<config>-s<seed>/summary.json (+ config.json) of every finished "
                    "run and DIR/costs.json, and write the table (last-epoch top-1 per seed: "
                    "mean ± std, 95% t interval, paired difference to the baseline with its "
                    "interval and t-test p, costs), the same bytes every time.",
        formatter_class=DefaultsFormatter)
    parser.add_argument("dir", metavar="DIR", help="results folder")
    parser.add_argument("--out", default=None, metavar="FILE.md",
                        help="Markdown file to write (default DIR/results.md); the .csv and "
                             ".png of the same name are written beside it")
    add_table_rows(parser)
    parser.add_argument("--costs", default=None, metavar="FILE.json",
                        help="costs measured by `attnres ablate` (default DIR/costs.json)")
    parser.add_argument("--update", default=None, metavar="README.md",
                        help="also replace the block between <!-- attnres-report:NAME --> "
                             "and <!-- /attnres-report --> in this Markdown file (default: "
                             "none)")
    parser.add_argument("--name", default=None,
                        help="block and title name (default: the name of DIR)")
    parser.add_argument("--no-plot", action="store_true", help="write no .png (default: "
                                                               "write it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from attnres.ablation import report

    report(args.dir, out=args.out, baseline=args.baseline, costs=args.costs, reuse=args.reuse,
           plot=not args.no_plot, update=args.update, name=args.name)
    print(args.out or f"{args.dir.rstrip('/')}/results.md")
    return 0
