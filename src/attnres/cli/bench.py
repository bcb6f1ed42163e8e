"""`attnres bench`: time baseline, attnres and (optionally) timm in one interleaved run, or
with `--suite` the standard table (ResNet-20 training, ResNet-50 inference, bf16 and fp32)."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_threads, gate_names, with_threads
from .options import parse_key_values

HELP = "time a network with attention against the plain one (and timm's), same run"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help=HELP, description=HELP.capitalize() + ". The "
                              "models are timed in turns (A B C A B C ...); medians with "
                              "their interquartile range and ratios to the baseline of the "
                              "same run are reported. --suite "
                              "runs the standard table and writes it as JSON and Markdown.",
                              formatter_class=DefaultsFormatter)
    p.add_argument("--suite", action="store_true",
                   help="the standard table: ResNet-20 + each gate module training (batch "
                        "128) and ResNet-50 + CBAM inference (batch 1, 16), bf16 and fp32")
    p.add_argument("--out", metavar="DIR", help="--suite: write suite.json and suite.md here")
    p.add_argument("--arch", default="resnet50", help="architecture (default resnet50)")
    p.add_argument("--attention", default="cbam", help=f"{gate_names()} (default cbam)")
    p.add_argument("--placement", default="block", help="where attention goes (default block)")
    p.add_argument("--attention-kwargs", metavar="K=V,...", default="",
                   help="options of the attention module, e.g. reduction=8,kernel_size=3")
    p.add_argument("--impl", choices=["fast", "reference"],
                   help="attention implementation (default fast)")
    p.add_argument("--amp", "--dtype", dest="amp", default=None,
                   choices=["auto", "bf16", "fp16", "fp32"],
                   help="precision: autocast dtype or fp32; auto = bf16 on CUDA with bf16 "
                        "and on CPUs with native bf16, fp16 on other GPUs, else fp32 "
                        "(default auto; --suite runs bf16 and fp32)")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed call")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="side of the square input in pixels (default: 32 for CIFAR nets, "
                        "else 224)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--mode", choices=["infer", "train"], default="infer",
                   help="infer: forward under inference_mode; train: one SGD step + peak memory")
    p.add_argument("--compare", action="append", default=[], choices=["timm"],
                   help="also time timm's counterpart (needs timm)")
    p.add_argument("--repeats", "--rounds", dest="repeats", type=int,
                   help="timed rounds per model (default 20; --suite: 5)")
    p.add_argument("--warmup", type=int, help="untimed runs per model (default 3; --suite: 2)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last models and input (default off; --suite: on)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every model first (compiled in the warm-up; minutes "
                        "per model on CPU)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall time, or the process's CPU time (CPU only: leaves out waiting "
                        "for a core on a shared machine)")
    add_threads(p)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON (default: "
                                                  "print only)")
    p.set_defaults(func=run_bench)


@with_threads
def run_bench(args: argparse.Namespace) -> int:
    from ..utils import atomic_write_json

    if args.suite:
        return _run_suite(args)
    if args.out:
        raise ValueError("--out applies to --suite; a single bench writes --json PATH")
    from ..analysis.bench import bench, format_bench

    threads = args.threads  # resolved by @with_threads
    result = bench(args.arch, args.attention, batch_size=args.batch_size,
                   image_size=args.image_size, device=args.device, mode=args.mode,
                   compare=tuple(args.compare), repeats=args.repeats or 20,
                   warmup=3 if args.warmup is None else args.warmup,
                   channels_last=bool(args.channels_last), threads=threads,
                   placement=args.placement, impl=args.impl, amp=args.amp or "auto",
                   clock=args.clock, compile=args.compile,
                   attention_kwargs=parse_key_values(args.attention_kwargs,
                                                    "--attention-kwargs") or None)
    print(format_bench(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0


def _run_suite(args: argparse.Namespace) -> int:
    from ..analysis.suite import format_suite, suite, write_suite
    from ..utils import atomic_write_json

    if args.amp is not None or args.impl is not None or args.compile:
        raise ValueError("--suite runs bf16 and fp32 with the default (fast) modules, "
                         "eager; drop --amp / --impl / --compile, or run a single bench")
    result = suite(device=args.device, rounds=args.repeats or 5,
                   warmup=2 if args.warmup is None else args.warmup, threads=args.threads,
                   compare=tuple(args.compare), clock=args.clock,
                   channels_last=args.channels_last is not False)
    print(format_suite(result), end="")
    if args.out:
        for path in write_suite(result, args.out):
            print(f"wrote {path}")
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
