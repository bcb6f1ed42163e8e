"""`attnres bench`: time baseline, attnres and (optionally) timm in one interleaved run."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_threads, apply_threads
from .options import parse_key_values

HELP = "time a network with attention against the plain one (and timm's), same run"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=HELP, description=HELP.capitalize() + ". The "
                              "models are timed in turns (A B C A B C ...); medians and "
                              "ratios to the baseline of the same run are reported.",
                              formatter_class=DefaultsFormatter)
    p.add_argument("--arch", default="resnet50", help="architecture (default resnet50)")
    p.add_argument("--attention", default="cbam", help="se, eca, cbam or bam (default cbam)")
    p.add_argument("--placement", default="block", help="where attention goes (default block)")
    p.add_argument("--attention-kwargs", metavar="K=V,...", default="",
                   help="options of the attention module, e.g. reduction=8,kernel_size=3")
    p.add_argument("--impl", choices=["fast", "reference"],
                   help="attention implementation (se, eca, cbam; default fast)")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed call")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="side of the square input in pixels (default: 32 for CIFAR nets, "
                        "else 224)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="infer: forward under inference_mode; train: one SGD step + peak memory")
    p.add_argument("--compare", action="append", default=[], choices=["timm"],
                   help="also time timm's counterpart (needs timm; default: no comparison)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per model (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per model (default 3)")
    p.add_argument("--channels-last", action="store_true", help="channels_last models and input")
    add_threads(p)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON (default: "
                                                  "print only)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from ..analysis.bench import bench, format_bench, write_json

    threads = apply_threads(args)
    result = bench(args.arch, args.attention, batch_size=args.batch_size,
                   image_size=args.image_size, device=args.device, mode=args.mode,
                   compare=tuple(args.compare), repeats=args.repeats, warmup=args.warmup,
                   channels_last=args.channels_last, threads=threads,
                   placement=args.placement, impl=args.impl,
                   attention_kwargs=parse_key_values(args.attention_kwargs,
                                                    "--attention-kwargs") or None)
    print(format_bench(result))
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
