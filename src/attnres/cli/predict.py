"""`attnres predict`: the most probable classes of image files (calls attnres.predict)."""

from __future__ import annotations

import argparse
import json

from .common import DefaultsFormatter, add_threads, with_threads

HELP = "classify image files with a trained checkpoint: top-k classes and probabilities"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help=HELP,
        description=HELP[0].upper() + HELP[1:] + ". Images are prepared with the model's "
        "stored preprocessing (resize, centre crop, the training mean/std).",
        formatter_class=DefaultsFormatter)
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files, folders (searched recursively) or glob patterns")
    p.add_argument("--checkpoint", required=True, metavar="RUN",
                   help="a run folder (its best.pt) or a checkpoint file (last.pt, ema.pt)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {image, predictions: [{class, probability}]}")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    add_threads(p)
    p.set_defaults(func=run)


@with_threads
def run(args: argparse.Namespace) -> int:
    from attnres.checkpoint import load_model
    from attnres.prediction import find_images, predict
    from attnres.utils import resolve_device

    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k} must be >= 1")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1")
    files = find_images(args.images)  # bad paths fail before the model is loaded
    model = load_model(args.checkpoint, map_location=resolve_device(args.device))
    results = predict(model, files, top_k=args.top_k, batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{"image": str(f), "predictions": [
            {"class": c, "probability": p} for c, p in top]} for f, top in zip(files, results)],
            indent=1))
    else:
        for file, top in zip(files, results):
            print(f"{file}: " + ", ".join(f"{c} ({p:.1%})" for c, p in top))
    return 0
