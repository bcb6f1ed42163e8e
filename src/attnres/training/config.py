"""The options of a training run: `TrainConfig`, their validation, and the errors of a run.

`TrainConfig` is one flat dataclass: the CLI fills it, `config.json` and every checkpoint
store it (as a dict), and `--resume` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..utils import closest, resolve_device


@dataclass
class TrainConfig:
    """Every option of a training run; the CLI fills it and each checkpoint stores it.

    Defaults are the recipe (CIFAR-style ResNet: SGD + nesterov, cosine with warm-up,
    label smoothing 0.1, weight decay 5e-4 on conv/linear weights only).
    """

    # model (see attnres.build_model)
    arch: str = "resnet20"
    attention: str | None = None             # None: the plain network
    placement: str | list[str] = "block"     # or several, e.g. ["stem", "head"]
    stages: list[int] | None = None          # None: every stage the placement allows
    blocks: dict[str, list[bool]] | None = None  # stage -> which blocks get attention
    preset: str | None = None                # a named placement preset
    attention_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None            # torchvision weights name or a file

    # data (see attnres.load_dataset)
    data: str = "digits"
    val_split: float | None = None           # fraction (or count) held out for validation
    split_seed: int = 0                      # fixed, so every seed sees the same val set
    image_size: int | None = None            # None: the data set's own size
    cache_dir: str | None = None
    subset: int | None = None                # train on a stratified subset of this many images

    # optimisation
    epochs: float = 30                       # a fraction runs that share of an epoch's steps
    batch_size: int = 128                    # global batch, split across DDP processes
    lr: float = 0.1                          # peak learning rate
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4               # not applied to 0-D/1-D parameters (norm, bias, scale)
    label_smoothing: float = 0.1
    schedule: str = "cosine"                 # "cosine" or "step"
    warmup_epochs: float = 1.0               # linear warm-up from lr/warmup_steps, per step
    step_milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions
    step_gamma: float = 0.1
    attention_lr_mult: float = 1.0           # lr multiplier for attention parameters

    # how long (see training/limits.py): the first limit reached ends the run
    max_steps: int | None = None             # at most this many optimizer steps
    max_time: float | None = None            # seconds of training in this call (not kept
                                             # by --resume), checked at every step

    # run
    seed: int = 0
    device: str = "auto"                     # "auto", "cpu", "cuda" or "cuda:N"
    amp: bool = False                        # autocast (CUDA: bf16 or fp16 + GradScaler)
    amp_dtype: str = "bfloat16"              # "bfloat16" or "float16"
    channels_last: bool = True               # CUDA, and CPU under --amp
    compile: bool = False                    # torch.compile the model
    deterministic: bool = False              # CUDA: deterministic kernels (slower)
    out: str | None = None                   # None: runs/<arch>-<attention>-s<seed>
    resume: str | None = None                # a run folder or a checkpoint file
    monitor: bool = False                    # log attention statistics per epoch
    skip_nonfinite: int = 0                  # tolerate this many non-finite-loss steps
    tensorboard: bool = True
    quiet: bool = False
    recipe: str | None = None                # the named recipe the options started from


# Options that may change when a run is resumed; all others must match the saved run or be
# left at their defaults (then the saved values are used).
RESUME_OVERRIDABLE = {"epochs", "max_steps", "max_time", "out", "resume", "device", "compile", "monitor",
                      "skip_nonfinite", "tensorboard", "quiet"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than `skip_nonfinite` allows."""


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad option of `config`."""
    def positive_int(name: str) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r}: must be a positive integer")

    def positive_number(name: str) -> None:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value > 0 and math.isfinite(value)):
            raise ValueError(f"{name}={value!r}: must be a positive number")

    positive_number("epochs")
    positive_int("batch_size")
    for name in ("max_steps", "subset"):
        if getattr(config, name) is not None:
            positive_int(name)
    if config.max_time is not None:
        positive_number("max_time")
    if not (isinstance(config.lr, (int, float)) and config.lr > 0 and math.isfinite(config.lr)):
        raise ValueError(f"lr={config.lr!r}: must be a positive number")
    for name in ("momentum", "label_smoothing"):
        value = getattr(config, name)
        if not 0 <= value < 1:
            raise ValueError(f"{name}={value!r}: must be in [0, 1)")
    if config.nesterov and config.momentum == 0:
        raise ValueError("nesterov needs momentum > 0 (got momentum=0)")
    if config.weight_decay < 0:
        raise ValueError(f"weight_decay={config.weight_decay!r}: must be >= 0")
    if config.attention_lr_mult < 0:
        raise ValueError(f"attention_lr_mult={config.attention_lr_mult!r}: must be >= 0")
    if config.warmup_epochs < 0:
        raise ValueError(f"warmup_epochs={config.warmup_epochs!r}: must be >= 0")
    if config.schedule not in ("cosine", "step"):
        raise ValueError(f"schedule={config.schedule!r}: allowed: cosine, step")
    if any(not 0 < m < 1 for m in config.step_milestones):
        raise ValueError(f"step_milestones={config.step_milestones!r}: fractions in (0, 1)")
    if config.val_split is not None and not (0 < config.val_split < 1 or (
            isinstance(config.val_split, int) and config.val_split >= 1)):
        raise ValueError(f"val_split={config.val_split!r}: must be a fraction in (0, 1) or a "
                         f"whole number of images")
    if config.image_size is not None and (not isinstance(config.image_size, int)
                                          or config.image_size < 1):
        raise ValueError(f"image_size={config.image_size!r}: must be a positive integer")
    if config.amp_dtype not in ("bfloat16", "float16"):
        raise ValueError(f"amp_dtype={config.amp_dtype!r}: allowed: bfloat16, float16")
    if isinstance(config.skip_nonfinite, bool) or config.skip_nonfinite < 0:
        raise ValueError(f"skip_nonfinite={config.skip_nonfinite!r}: must be >= 0")
    resolve_device(config.device)  # raises naming the device when it is not usable here
    if not isinstance(config.attention_kwargs, dict):
        raise ValueError(f"attention_kwargs={config.attention_kwargs!r}: must be a dict")

    from ..attention import list_attention
    from ..models import list_models, list_placements, list_presets
    from .recipe import RECIPES

    def known(name: str, value: str | None, allowed: list[str]) -> None:
        if value is not None and value not in allowed:
            raise ValueError(f"unknown {name} {value!r}{closest(value, allowed)}; "
                             f"allowed: {', '.join(allowed)}")

    known("architecture", config.arch, list_models())
    known("attention", config.attention, list_attention())
    placements = [config.placement] if isinstance(config.placement, str) else config.placement
    for placement in placements:
        known("placement", placement, list_placements())
    known("preset", config.preset, list_presets())
    known("recipe", config.recipe, sorted(RECIPES))


__all__ = ["RESUME_OVERRIDABLE", "NonFiniteLossError", "TrainConfig", "validate_config"]
