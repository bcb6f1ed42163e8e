"""`attnres profile`: parameters, FLOPs, activation memory and latency of a network."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_threads, gate_names, with_threads
from .options import parse_key_values

HELP = "parameters, FLOPs, activation memory and latency, with and without attention"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profile", help=HELP, description=HELP.capitalize() + ".",
                              formatter_class=DefaultsFormatter)
    p.add_argument("--arch", default="resnet50", help="architecture (default resnet50)")
    p.add_argument("--attention", default="cbam",
                   help=f"{gate_names()}, or none for the plain network (default cbam)")
    p.add_argument("--placement", default="block", help="where attention goes (default block)")
    p.add_argument("--attention-kwargs", metavar="K=V,...", default="",
                   help="options of the attention module, e.g. reduction=8,kernel_size=3")
    p.add_argument("--batch-size", type=int, default=1, help="images per timed call")
    p.add_argument("--image-size", type=int, metavar="PX",
                   help="side of the square input in pixels (default: 32 for CIFAR nets, "
                        "else 224)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--repeats", type=int, default=10, help="timed runs (default 10)")
    add_threads(p)
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON (default: "
                                                  "print only)")
    p.set_defaults(func=run_profile)


@with_threads
def run_profile(args: argparse.Namespace) -> int:
    from ..analysis.profile import format_profile, profile_model
    from ..utils import atomic_write_json

    threads = args.threads  # resolved by @with_threads
    attention = None if str(args.attention).lower() == "none" else args.attention
    result = profile_model(args.arch, attention, placement=args.placement,
                           image_size=args.image_size, batch_size=args.batch_size,
                           device=args.device, repeats=args.repeats, threads=threads,
                           attention_kwargs=parse_key_values(args.attention_kwargs,
                                                            "--attention-kwargs") or None)
    print(format_profile(result))
    if args.json:
        atomic_write_json(args.json, result)
        print(f"wrote {args.json}")
    return 0
