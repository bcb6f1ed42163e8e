"""`attnres ablate`: train the missing runs of a grid of configurations x seeds and write
an honest table."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .common import DefaultsFormatter, add_amp, add_table_rows, add_threads, number, with_threads
from .options import parse_key_values


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "ablate", help="train a grid of configurations x seeds; write results.md/.csv/.png",
        description="Train every configuration of a preset or TOML grid with every seed "
                    "(runs already finished under --results or --out are skipped; a "
                    "finished run with another recipe is refused), measure the costs in one "
                    "process (costs.json), then write results.md, results.csv and "
                    "results.png (see `attnres report`).",
        formatter_class=DefaultsFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--preset", help="named grid: modules (baseline/SE/ECA/CBAM/BAM) or "
                                        "placements (CBAM presets); this or --grid is required")
    which.add_argument("--grid", metavar="FILE.toml", help="grid file ([defaults] and "
                                                           "[[configs]] tables); this or "
                                                           "--preset is required")
    parser.add_argument("--recipe", default=None, metavar="NAME",
                        help="start every configuration from a named recipe (e.g. "
                             "imagenet-resnet, as `attnres train --recipe`); the grid's "
                             "values and the options given override it")
    parser.add_argument("--data", default=None,
                        help="digits (default), cifar10, cifar100, a folder or .tar(.gz)")
    parser.add_argument("--val-split", type=float, default=None,
                        help="validation fraction in (0, 1) or number of images (default: "
                             "the data set's: 0.2 for digits, the test split for CIFAR)")
    parser.add_argument("--arch", default=None, help="architecture for every configuration "
                                                     "(default: the grid's, else resnet20)")
    parser.add_argument("--epochs", type=number, default=None,
                        help="epochs per run, a fraction allowed (default: the grid's, else "
                             "the train default)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="batch size of every run (default: the grid's, else the train "
                             "default)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N",
                        help="at most N optimizer steps per run (default: no limit)")
    parser.add_argument("--max-time", type=float, default=None, metavar="SECONDS",
                        help="each run stops after the step that passes SECONDS (default: "
                             "no limit)")
    parser.add_argument("--subset", type=int, default=None, metavar="N",
                        help="train on a stratified subset of N training images (default: "
                             "all of them)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                        help="seeds of every configuration (default: the grid's, else 0)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: the train "
                                                       "default)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="any other TrainConfig field for every run, e.g. "
                             "--set warmup_epochs=0.2 (a Python or JSON literal, else text)")
    parser.add_argument("--out", required=True, help="folder for the training runs "
                                                     "(checkpoints)")
    parser.add_argument("--results", default=None, metavar="DIR",
                        help="results folder: each finished run's summary.json, metrics.csv "
                             "and config.json are copied to DIR/<config>-s<seed>/, and the "
                             "report is written there (default: --out)")
    add_table_rows(parser)
    parser.add_argument("--no-latency", action="store_true",
                        help="skip measuring the costs (latency, training speed, memory)")
    parser.add_argument("--no-explain", action="store_true",
                        help="skip the Grad-CAM / attention-map grid")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="train only every N-th run, starting at the I-th (N processes "
                             "share one grid; costs and maps are left to a run without "
                             "--shard) (default: every run)")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: measure the costs, draw the maps and write the "
                             "report of the runs finished so far (while a --shard grid or "
                             "another machine still trains the rest)")
    add_amp(parser, default=None)
    add_threads(parser)
    parser.set_defaults(func=run)


def parse_settings(items: list[str]) -> dict[str, Any]:
    """`["lr=0.05", "schedule=step"]` -> `{"lr": 0.05, "schedule": "step"}` (the grammar of
    `attnres.cli.options`)."""
    settings: dict[str, Any] = {}
    for item in items:
        settings.update(parse_key_values(item, "--set", example="warmup_epochs=0.2"))
    return settings


@with_threads
def run(args: argparse.Namespace) -> int:
    from attnres.ablation import ablate

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("attnres ablate trains its grid in one process and cannot run "
                         "under torchrun; run each configuration as `torchrun ... -m attnres "
                         "train --out DIR/<config>-s<seed> ...`, then `attnres report DIR` "
                         "(docs/SCALE.md)")
    overrides = parse_settings(args.set)
    if args.val_split is not None:
        # whole numbers mean a count of images, as in `attnres train --val-split`
        overrides["val_split"] = int(args.val_split) if args.val_split >= 1 else args.val_split
    for field in ("device", "amp"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    for field in ("max_steps", "max_time", "subset"):
        if getattr(args, field) is not None:
            overrides[field] = getattr(args, field)
    if args.epochs is not None and not args.epochs > 0:
        raise ValueError(f"--epochs {args.epochs}: must be a positive number")
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size}: must be at least 1")
    ablate(args.preset or args.grid, out=args.out, results=args.results, reuse=args.reuse,
           baseline=args.baseline, seeds=args.seeds, data=args.data,
           arch=args.arch, epochs=args.epochs, batch_size=args.batch_size,
           overrides=overrides, latency=not args.no_latency, explain_maps=not args.no_explain,
           recipe=args.recipe, shard=args.shard, train=not args.no_train)
    return 0
