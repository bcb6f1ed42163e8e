"""`attnres export`: write a trained model as ONNX, a torch.export program or int8, checked
against PyTorch; calls `attnres.export.export_model`."""

from __future__ import annotations

import argparse
import json

from .common import DefaultsFormatter, add_threads, with_threads

HELP = "export a checkpoint as ONNX, torch.export (pt2) or int8, with accuracy and speed"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help=HELP, description=HELP.capitalize() + ". With --data, prints top-1 "
        "and latency of fp32 PyTorch and the export on the validation split.",
        formatter_class=DefaultsFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint file or run folder written by `attnres train`")
    p.add_argument("--format", required=True, choices=["onnx", "pt2", "int8"],
                   help="onnx (ONNX Runtime), pt2 (torch.export program) or int8 (quantized "
                        "PyTorch)")
    p.add_argument("--out", required=True, help="file to write (.onnx, .pt2, .pt)")
    p.add_argument("--data", help="digits, cifar10, cifar100, or an ImageFolder path/archive: "
                   "validation images (and calibration images for int8); the checkpoint's own "
                   "validation split is used when this is the data it was trained on "
                   "(default: none, no accuracy check; int8 then needs it)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    p.add_argument("--dynamic", action=argparse.BooleanOptionalAction, default=True,
                   help="dynamic batch, height and width (default: on)")
    p.add_argument("--exporter", choices=["dynamo", "torchscript"], default="dynamo",
                   help="ONNX exporter: torch.export-based (default) or the older tracer")
    p.add_argument("--image-size", type=int, help="export example size (default: the "
                   "checkpoint's image size)")
    p.add_argument("--calibration-images", type=int, default=512,
                   help="training images for int8 calibration")
    p.add_argument("--val-images", type=int, help="validate on this many images "
                   "(default: the whole validation split)")
    p.add_argument("--batch-size", type=int, default=100,
                   help="batch size for validation and calibration")
    add_threads(p)  # ONNX Runtime sessions take torch's count
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


@with_threads
def run(args: argparse.Namespace) -> int:
    from attnres.export import export_model, format_report

    report = export_model(args.checkpoint, args.format, args.out, data=args.data,
                          opset=args.opset, dynamic=args.dynamic, exporter=args.exporter,
                          image_size=args.image_size,
                          calibration_images=args.calibration_images,
                          val_images=args.val_images, batch_size=args.batch_size)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    diff = report.get("max_abs_diff")
    if diff is not None and diff > 1e-4:
        print(f"attnres export: max abs diff {diff:.2e} exceeds 1e-4")
        return 1
    return 0
