"""`attnres eval`: metrics of a trained checkpoint on a data set (calls evaluate_checkpoint)."""

from __future__ import annotations

import argparse

from ..training.options_spec import TTA_MODES, default_text
from .help import show_defaults
from .common import add_amp, add_threads, with_threads

HELP = "evaluate a checkpoint: top-1/top-5, loss, per-class accuracy, confusion matrix"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help=HELP, description=HELP.capitalize() + ". Writes "
                              "eval.json and confusion.png.")
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a checkpoint file (best.pt, last.pt) or a run folder")
    p.add_argument("--data", metavar="SPEC",
                   help="digits, cifar10, cifar100, or an ImageFolder path/archive "
                        "(default: the checkpoint's training data)")
    p.add_argument("--split", choices=["val", "train", "all"],
                   help="which images to score: val of the run's own data and of data with "
                        "its own validation images (root/val/) or a --val-split; all of "
                        "other data (default)")
    p.add_argument("--val-split", type=float, metavar="F",
                   help="validation fraction in (0, 1) or image count (default: the "
                        "checkpoint's, when the data is the same)")
    p.add_argument("--split-seed", type=int, metavar="S",
                   help="seed of the stratified split (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--cache-dir", metavar="DIR", help="where decoded images are cached")
    p.add_argument("--data-loader", dest="loader", choices=["memory", "stream"],
                   help="decode the data into memory or stream it (default: as the run "
                        "trained)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="DataLoader workers when streaming (default: the run's)")
    p.add_argument("--out", metavar="DIR",
                   help="folder for eval.json and confusion.png (default: <run>/eval)")
    p.add_argument("--tta", choices=TTA_MODES,
                   help="test-time augmentation: flip averages the logits of each image and "
                        "its mirror image (default: the run's own, as it was validated)")
    add_amp(p)
    add_threads(p)
    p.set_defaults(func=run)
    show_defaults(p, {"cache_dir": default_text("cache_dir", None)})


@with_threads
def run(args: argparse.Namespace) -> int:
    from attnres.evaluation import evaluate_checkpoint, format_table

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers {args.workers} must be >= 0")
    result = evaluate_checkpoint(args.checkpoint, args.data, out=args.out, split=args.split,
                                 val_split=args.val_split, split_seed=args.split_seed,
                                 batch_size=args.batch_size, device=args.device,
                                 cache_dir=args.cache_dir, loader=args.loader,
                                 workers=args.workers, amp=args.amp, tta=args.tta)
    print(f"precision: {result['amp']} ({result['amp_reason']})"
          + (f"; test-time augmentation: {result['tta']}" if result["tta"] != "none" else ""))
    print(format_table(result))
    print(f"wrote {result['files']['json']} and {result['files']['confusion']}")
    return 0
