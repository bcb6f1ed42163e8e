"""`attnres train`: fill a `TrainConfig` from the command line and call `attnres.train`."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from ..training.options_spec import TTA_MODES
from .help import show_train_defaults
from .common import add_amp, add_threads, gate_names, number, with_threads
from .options import parse_key_values

HELP = "train a model (checkpoints, resume, DDP under torchrun)"


def parse_blocks(items: list[str], arch: str) -> dict[str, list[bool]]:
    """['3:1,2'] -> {'3': [False, True, True]} for a stage of three blocks in `arch`."""
    from attnres.models.build import arch_spec

    depths = arch_spec(arch).layers
    masks: dict[str, list[bool]] = {}
    for item in items:
        stage, sep, indices = item.partition(":")
        try:
            s, chosen = int(stage), [int(i) for i in indices.split(",") if i.strip()]
        except ValueError:
            raise ValueError(f"--blocks {item!r}: expected STAGE:I,J,... e.g. 3:1,2") from None
        if not sep or not chosen:
            raise ValueError(f"--blocks {item!r}: expected STAGE:I,J,... e.g. 3:1,2")
        if not 1 <= s <= len(depths):
            raise ValueError(f"--blocks {item!r}: stage {s} out of range; {arch} has stages "
                             f"1..{len(depths)}")
        for i in chosen:
            if not 0 <= i < depths[s - 1]:
                raise ValueError(f"--blocks {item!r}: block {i} out of range; stage {s} of "
                                 f"{arch} has blocks 0..{depths[s - 1] - 1}")
        masks[str(s)] = [i in chosen for i in range(depths[s - 1])]
    return masks


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    description = (f"{HELP[0].upper()}{HELP[1:]}. Options left out take the values of "
                   f"--recipe, else the defaults shown (those of attnres.TrainConfig).")
    p = subparsers.add_parser("train", help=HELP, description=description)
    p.add_argument("--recipe", metavar="NAME",
                   help="start from a named recipe (e.g. cifar-fast, see "
                        "attnres.training.RECIPES); the options given override its values")
    _add_model_options(p)
    _add_data_options(p)
    _add_optimisation_options(p)
    _add_run_options(p)
    p.set_defaults(func=run_train)
    show_train_defaults(p)



def _add_model_options(p: argparse.ArgumentParser) -> None:
    model = p.add_argument_group("model")
    model.add_argument("--arch", help="architecture, e.g. resnet20 (see `attnres models`)")
    model.add_argument("--attention", help=f"{gate_names()}, or none")
    model.add_argument("--placement", nargs="+", metavar="NAME",
                       help="where attention goes: block, block-post, stage, stem, head ...")
    model.add_argument("--stages", nargs="+", type=int, metavar="S",
                       help="stages (1-based) that get attention")
    model.add_argument("--blocks", nargs="+", metavar="S:I,J",
                       help="only blocks I, J (0-based) of stage S get attention, e.g. 3:1,2")
    model.add_argument("--preset", help="named placement preset")
    model.add_argument("--attention-kwargs", metavar="K=V,...",
                       help="options of the attention module, e.g. reduction=8,kernel_size=3")
    model.add_argument("--pretrained", help="torchvision weights name or a weights file")
    model.add_argument("--from", dest="source", metavar="SOURCE",
                       help="train a network you have: torchvision:NAME, timm:NAME, or a saved "
                            "model / checkpoint / run folder (instead of --arch)")
    model.add_argument("--add-attention", metavar="NAME",
                       help="attention to add to the --from network at --placement")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    data = p.add_argument_group("data")
    data.add_argument("--data", help="digits, cifar10, cifar100, or an ImageFolder path/archive")
    data.add_argument("--val-split", type=float, metavar="F",
                      help="fraction in (0, 1), or a number of images, held out for validation")
    data.add_argument("--image-size", type=int, metavar="PX",
                      help="side in pixels the images are resized to (default: the data "
                           "set's own; 32 for digits and CIFAR)")
    data.add_argument("--cache-dir", help="where decoded images are cached")
    data.add_argument("--data-loader", dest="loader", choices=["auto", "memory", "stream"],
                      help="decode everything into memory, stream from disk in DataLoader "
                           "workers, or choose by size (default auto; docs/SCALE.md)")
    data.add_argument("--workers", type=int, metavar="N",
                      help="DataLoader workers per process when streaming (default 4)")
    data.add_argument("--mean", type=float, nargs=3, metavar=("R", "G", "B"),
                      help="normalisation mean (default: the training split's)")
    data.add_argument("--std", type=float, nargs=3, metavar=("R", "G", "B"),
                      help="normalisation std (default: the training split's)")
    data.add_argument("--subset", type=int, metavar="N",
                      help="train on a stratified subset of N training images (drawn with "
                           "--split-seed; validation is unchanged)")


def _add_optimisation_options(p: argparse.ArgumentParser) -> None:
    optim = p.add_argument_group("optimisation")
    optim.add_argument("--epochs", type=number,
                       help="epochs; a fraction (0.1) runs that share of an epoch's steps")
    optim.add_argument("--batch-size", type=int, help="global batch (split over processes)")
    optim.add_argument("--lr", type=float, help="peak learning rate")
    optim.add_argument("--momentum", type=float, help="SGD momentum")
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                       help="Nesterov momentum")
    optim.add_argument("--weight-decay", type=float,
                       help="L2 weight decay of conv and linear weights (not BN or biases)")
    optim.add_argument("--label-smoothing", type=float,
                       help="label smoothing of the cross-entropy, in [0, 1)")
    optim.add_argument("--schedule", choices=["cosine", "step"],
                       help="learning-rate schedule after the warm-up: cosine to 0, or step "
                            "(x0.1 at 1/2 and 3/4 of the run; TrainConfig.step_*)")
    optim.add_argument("--warmup-epochs", type=float,
                       help="linear warm-up of the learning rate, in epochs (capped at a "
                            "quarter of the run)")
    optim.add_argument("--attention-lr-mult", type=float,
                       help="learning-rate multiplier for attention parameters")
    optim.add_argument("--tta", choices=TTA_MODES,
                       help="validation with test-time augmentation: flip averages the "
                            "logits of each image and its mirror image (default: none)")
    optim.add_argument("--ema", type=float, metavar="DECAY",
                       help="keep an EMA of the weights (e.g. 0.999), validated every epoch")
    optim.add_argument("--precise-bn", type=int, metavar="N",
                       help="after the last epoch, recompute batch-norm statistics over N "
                            "training batches")

    limits = p.add_argument_group("limits (the first one reached ends the run)")
    limits.add_argument("--max-steps", type=int, metavar="N",
                        help="at most N optimizer steps (the schedule spans them)")
    limits.add_argument("--max-time", type=float, metavar="SECONDS",
                        help="stop after the step during which SECONDS of training have "
                             "passed; checkpoints and summary.json say so")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    run = p.add_argument_group("run")
    run.add_argument("--seed", type=int,
                     help="seed of the weights, the data order and the augmentation")
    run.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    add_amp(run, default=None)  # None: a resumed run knows whether it was given
    run.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                     help="channels_last memory format on CUDA and under CPU bf16")
    run.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="torch.compile the model")
    run.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                     help="deterministic CUDA kernels (slower)")
    run.add_argument("--out", metavar="DIR", help="run folder (default runs/ARCH-ATTN-sSEED)")
    run.add_argument("--resume", metavar="RUN",
                     help="continue the run in this folder (or from this checkpoint)")
    run.add_argument("--overwrite", action="store_true", default=None,
                     help="replace the run already in --out (its checkpoints, metrics and "
                          "summary); without it such a folder is refused")
    run.add_argument("--monitor", action=argparse.BooleanOptionalAction, default=None,
                     help="log attention statistics per epoch and warn on saturation")
    run.add_argument("--skip-nonfinite", type=int, metavar="N",
                     help="skip up to N steps whose loss is NaN/inf instead of stopping")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                     help="write TensorBoard event files into the run folder")
    run.add_argument("--quiet", action="store_true", default=None,
                     help="no progress bar or per-epoch lines")
    add_threads(run)

def _given_values(args: argparse.Namespace) -> dict[str, Any]:
    """The options on the command line (every train option defaults to None), with the
    values of --recipe under them."""
    from attnres.training import TrainConfig, recipe_values

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if getattr(args, f.name, None) is not None}
    if "recipe" in values:  # the recipe first, the options given on top
        values = recipe_values(values["recipe"], values)
    return values


def options_given(args: argparse.Namespace) -> set[str]:
    """The `TrainConfig` fields the command line set (a recipe sets its fields): a resumed
    run refuses any of them that differs from the saved run, defaults included."""
    return set(_given_values(args))


def config_from_args(args: argparse.Namespace) -> Any:
    """The `TrainConfig` the options ask for (options left out keep the defaults)."""
    from attnres.training import TrainConfig

    values = _given_values(args)
    if "attention" in values and values["attention"].lower() == "none":
        values["attention"] = None
    if "placement" in values:
        placements = values["placement"]
        values["placement"] = placements[0] if len(placements) == 1 else placements
    if "blocks" in values:
        values["blocks"] = parse_blocks(values["blocks"],
                                        values.get("arch", TrainConfig.arch))
    if "attention_kwargs" in values:
        values["attention_kwargs"] = parse_key_values(values["attention_kwargs"],
                                                      "--attention-kwargs")
    if "val_split" in values and float(values["val_split"]).is_integer() \
            and values["val_split"] >= 1:
        values["val_split"] = int(values["val_split"])  # a count of images
    return TrainConfig(**values)


@with_threads
def run_train(args: argparse.Namespace) -> int:
    from attnres.training import train

    config = config_from_args(args)
    train(config, given=options_given(args))
    return 0
