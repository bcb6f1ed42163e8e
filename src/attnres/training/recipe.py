"""The training recipe: parameter groups, the learning-rate schedule, and named recipes.

`RECIPES` names sets of `TrainConfig` values that were used for real runs, so that a
command line (`attnres train --recipe NAME`) or a script can say "that recipe" in one word
and the run's `config.json` records which one it started from.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from ..attention import iter_attention
from ..data.scale import IMAGENET_MEAN, IMAGENET_STD
from ..utils import closest

RECIPES: dict[str, dict[str, Any]] = {
    # CIFAR-10 in 50 epochs: the recipe of the CIFAR-10 grids in docs/results (the plain
    # ResNet-20 reached 84.5 % in 15 epochs and 87.1 % in 30, below the 88 % the grid needs;
    # docs/RESULTS.md): ResNet-20, SGD +
    # nesterov, cosine with one warm-up epoch, label smoothing 0.1, weight decay 5e-4 on
    # conv/linear weights, bf16 autocast on every device (not "auto", so that a machine
    # without native bf16 runs the same arithmetic, only slower) with channels_last (oneDNN's
    # bf16 convolutions are NHWC), validated with flip test-time augmentation (+1.0 point on
    # the 50-epoch baseline's 87.48 %; docs/RESULTS.md). Spelled out in full, so a change of
    # the defaults does not change it.
    "cifar-fast": {
        "arch": "resnet20",
        "epochs": 50,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "weight_decay": 5e-4,
        "label_smoothing": 0.1,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "amp": "bf16",
        "channels_last": True,
        "tta": "flip",
    },
    # ImageNet, torchvision's reference ResNet recipe (pytorch/vision references/
    # classification: 8 GPUs x 32 = 256 images, lr 0.1, momentum 0.9, wd 1e-4, 90 epochs,
    # lr x 0.1 at epochs 30, 60 and 80 as in Goyal et al. 2017, who add the 5-epoch linear
    # warm-up and the lr scaling of LR_REFERENCE_BATCH; label smoothing 0.1 from the newer
    # IMAGENET1K_V2 recipe). Streamed: RandomResizedCrop on the full-resolution image, as
    # torchvision does, not on the memory path's 256 px copies. See docs/SCALE.md.
    "imagenet-resnet": {
        "arch": "resnet50",
        "image_size": 224,
        "epochs": 90,
        "batch_size": 256,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "label_smoothing": 0.1,
        "schedule": "step",
        "step_milestones": [1 / 3, 2 / 3, 8 / 9],  # epochs 30, 60, 80 of 90
        "step_gamma": 0.1,
        "warmup_epochs": 5.0,
        "loader": "stream",
        "workers": 8,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "amp": "bf16",
        "channels_last": True,
    },
}

# Recipes whose lr is given for this global batch: a run with another batch_size (and no lr
# of its own) gets lr x batch_size / reference, the linear scaling rule of Goyal et al. 2017.
LR_REFERENCE_BATCH: dict[str, int] = {"imagenet-resnet": 256}


def recipe_values(name: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `TrainConfig` values of the recipe `name` (a copy) with the options `given` on
    top, plus `recipe=name`. For a recipe of `LR_REFERENCE_BATCH`, a `batch_size` given
    without an `lr` scales the recipe's lr linearly with the batch."""
    if name not in RECIPES:
        names = sorted(RECIPES)
        raise ValueError(f"unknown recipe {name!r}{closest(name, names)}; allowed: "
                         f"{', '.join(names)}")
    given = dict(given or {})
    values = {**RECIPES[name], **given, "recipe": name}
    reference = LR_REFERENCE_BATCH.get(name)
    if reference is not None and "lr" not in given and "batch_size" in given:
        values["lr"] = RECIPES[name]["lr"] * given["batch_size"] / reference
    return {key: list(v) if isinstance(v, list) else v for key, v in values.items()}


def attention_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters that belong to attention.

    Those are the parameters of every gate-kind module of the attention registry
    (`attnres.attention.iter_attention`), and of every attention slot (a module whose own
    name contains "attn": `attn`, `attn_post`, `stage_attn`, `stem_attn`, `head_attn`,
    `attn_before`, `attn_after`), which also covers the identity-init wrapper's `scale` and
    modules given as a class. Convolutions replaced by SK or split attention count as
    backbone: they are the block's own convolution.
    """
    prefixes = [path for path, _, _ in iter_attention(model, kind="gate")]
    prefixes += [path for path, _ in model.named_modules()
                 if path and "attn" in path.rsplit(".", 1)[-1]]
    if "" in prefixes:  # the model is itself a gate
        return {name for name, _ in model.named_parameters()}
    return {name for name, _ in model.named_parameters()
            if any(name.startswith(prefix + ".") for prefix in prefixes)}


def param_groups(model: nn.Module, *, lr: float, weight_decay: float,
                 attention_lr_mult: float = 1.0) -> list[dict[str, Any]]:
    """SGD parameter groups: decay vs no decay, backbone vs attention.

    0-D and 1-D parameters (norm weights and biases, conv/linear biases, identity-init
    scales) get no weight decay; attention parameters get `lr * attention_lr_mult`.
    Empty groups are left out; each group carries a `name` for logging.
    """
    attention_names = attention_parameter_names(model)
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            key = (name in attention_names, param.ndim <= 1)
            groups.setdefault(key, []).append(param)
    result = []
    for (is_attention, no_decay), params in sorted(groups.items()):
        result.append({
            "params": params,
            "lr": lr * (attention_lr_mult if is_attention else 1.0),
            "weight_decay": 0.0 if no_decay else weight_decay,
            "name": ("attention" if is_attention else "backbone")
                    + ("/no_decay" if no_decay else "/decay"),
        })
    return result


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str,
              milestones: list[float], gamma: float) -> float:
    """Learning-rate multiplier before optimizer step `step` (0-based), per step.

    Linear warm-up to 1 over `warmup_steps`, then cosine decay to 0 at `total_steps`, or
    a multiplication by `gamma` at each milestone (fractions of `total_steps`).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return gamma ** sum(step >= round(m * total_steps) for m in milestones)


def make_optimizer(model: nn.Module, config: Any) -> torch.optim.SGD:
    """SGD with the parameter groups of `param_groups` and the options of `config` (a
    `TrainConfig`)."""
    groups = param_groups(model, lr=config.lr, weight_decay=config.weight_decay,
                          attention_lr_mult=config.attention_lr_mult)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov)


def make_scheduler(optimizer: torch.optim.Optimizer, config: Any, steps_per_epoch: int
                   ) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of `config` (a `TrainConfig`) as a LambdaLR; its `lr_lambda`
    gives the factor of any step. It spans the run's steps and capped warm-up
    (`limits.plan_steps`: fractional epochs, `max_steps`)."""
    from .limits import plan_steps

    plan = plan_steps(config, steps_per_epoch)
    total_steps, warmup_steps = plan.total_steps, plan.warmup_steps

    def schedule(step: int) -> float:
        return lr_factor(step, total_steps=total_steps, warmup_steps=warmup_steps,
                         schedule=config.schedule, milestones=config.step_milestones,
                         gamma=config.step_gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def advance_scheduler(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One scheduler step; the schedule counts steps, skipped updates included."""
    with warnings.catch_warnings():  # torch warns when a skipped first update precedes it
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
        scheduler.step()


__all__ = ["LR_REFERENCE_BATCH", "RECIPES", "advance_scheduler", "attention_parameter_names", "lr_factor",
           "make_optimizer", "make_scheduler", "param_groups", "recipe_values"]
