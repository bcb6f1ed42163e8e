"""`attnres explain`: Grad-CAM and spatial attention maps of trained models, as a PNG grid."""

from __future__ import annotations

import argparse

from .common import DefaultsFormatter, add_amp, add_threads, with_threads


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from attnres.analysis.attention_maps import spatial_attention_names

    spatial = ", ".join(spatial_attention_names())  # from the attention registry
    parser = subparsers.add_parser(
        "explain", help=f"Grad-CAM + attention maps ({spatial}) of trained models on images",
        description="For each image and each checkpoint: Grad-CAM of the predicted class on "
                    "--layer and, for models with an attention module that has spatial "
                    f"gates ({spatial}), the attention map of the chosen module, overlaid on "
                    "the image. Writes OUT/grid.png (rows: images, columns: models), one PNG "
                    "per image and model, and OUT/explain.json with the numbers.",
        formatter_class=DefaultsFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="PATH",
                        help="a checkpoint (or run folder) from `attnres train`; repeat to "
                             "compare models")
    parser.add_argument("--images", nargs="+", default=None, metavar="IMAGE",
                        help="image files (default: scikit-image's sample photographs "
                             "chelsea, astronaut, coffee, rocket; no download)")
    parser.add_argument("--data", default=None, metavar="SPEC",
                        help="instead of --images: validation images of this data set "
                             "(digits, cifar10, a path), one per class in turn")
    parser.add_argument("--num-images", type=int, default=4, help="how many --data images")
    parser.add_argument("--layer", default=None,
                        help="Grad-CAM target module (default: the last stage, layer4 on "
                             "ImageNet ResNets, layer3 on CIFAR ResNets)")
    parser.add_argument("--attention-module", default=None, metavar="NAME",
                        help=f"attention module ({spatial}) whose map is shown (default: "
                             "the last one inside --layer)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="model input size (default: the one the model was trained at)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument("--out", required=True, help="output folder")
    add_amp(parser)
    add_threads(parser)
    parser.set_defaults(func=run)


@with_threads
def run(args: argparse.Namespace) -> int:
    from attnres.analysis.explain import explain

    result = explain(args.checkpoint, args.images, layer=args.layer,
                     attention_module=args.attention_module, out=args.out,
                     image_size=args.image_size, data=args.data,
                     num_images=args.num_images, device=args.device, amp=args.amp)
    print(f"precision: {result['amp']} ({result['amp_reason']})")
    for r in result["results"]:
        line = f"{r['image']:<12} {r['model']:<24} {r['pred_class']:<12} p={r['prob']:.3f}"
        if "attention" in r:
            line += f"  attention entropy={r['attention']['entropy']:.3f}"
        print(line)
    print(f"wrote {result['grid']}")
    return 0
