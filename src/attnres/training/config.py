"""The options of a training run: `TrainConfig`, their validation, and the errors of a run.

`TrainConfig` is one flat dataclass: the CLI fills it, `config.json` and every checkpoint
store it (as a dict), and `--resume` reads it back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..utils import closest


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
    source: str | None = None                # "torchvision:NAME", "timm:NAME" or a saved model/run
    add_attention: str | None = None         # attention added to `source` (training/model_source.py)

    # data (see attnres.load_dataset)
    data: str = "digits"
    val_split: float | None = None           # fraction (or count) held out for validation
    split_seed: int = 0                      # fixed, so every seed sees the same val set
    image_size: int | None = None            # None: the data set's own size
    cache_dir: str | None = None
    loader: str = "auto"                     # "memory", "stream" or "auto" (docs/SCALE.md)
    workers: int = 4                         # DataLoader workers per process (streaming)
    mean: list[float] | None = None          # normalisation; None: the training split's
    std: list[float] | None = None
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

    # weight averaging and batch-norm statistics (see training/ema.py, training/precise_bn.py)
    ema: float = 0.0                         # EMA decay of the weights, e.g. 0.999; 0: off
    precise_bn: int = 0                      # after the last epoch: BN statistics over N batches
    tta: str = "none"                        # validation: options_spec.TTA_MODES
    # how long (see training/limits.py): the first limit reached ends the run
    max_steps: int | None = None             # at most this many optimizer steps
    max_time: float | None = None            # seconds of training in this call (not kept
                                             # by --resume), checked at every step

    # run
    seed: int = 0
    device: str = "auto"                     # "auto", "cpu", "cuda" or "cuda:N"
    amp: str = "auto"                        # "auto", "bf16", "fp16" or "fp32" (precision.py);
                                             # a run records what "auto" resolved to
    channels_last: bool = True               # CUDA, and CPU under bf16 autocast
    compile: bool = False                    # torch.compile the model
    deterministic: bool = False              # CUDA: deterministic kernels (slower)
    out: str | None = None                   # None: runs/<arch>-<attention>-s<seed>
    resume: str | None = None                # a run folder or a checkpoint file
    overwrite: bool = False                  # a new run may replace the run in `out`
    monitor: bool = False                    # log attention statistics per epoch
    skip_nonfinite: int = 0                  # tolerate this many non-finite-loss steps
    tensorboard: bool = True
    quiet: bool = False
    recipe: str | None = None                # the named recipe the options started from


# Options that may change when a run is resumed; all others must match the saved run or be
# left at their defaults (then the saved values are used).
RESUME_OVERRIDABLE = {"epochs", "max_steps", "max_time", "out", "resume", "overwrite",
                      "device", "compile", "monitor", "skip_nonfinite", "tensorboard", "quiet",
                      "precise_bn", "workers"}


def upgrade_config_dict(values: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict of an older attnres (a checkpoint's or a config.json's) in today's
    fields: `amp` was a bool with `amp_dtype` ("bfloat16" or "float16") beside it, and is
    now the precision that ran ("bf16", "fp16" or "fp32"); before `tta` a run validated
    without test-time augmentation."""
    values = dict(values)
    values.setdefault("tta", "none")
    amp_dtype = values.pop("amp_dtype", "bfloat16")
    if isinstance(values.get("amp"), bool):
        values["amp"] = ("fp16" if amp_dtype == "float16" else "bf16") if values["amp"] \
            else "fp32"
    return values


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than `skip_nonfinite` allows."""


class NonFiniteModelError(NonFiniteLossError):
    """The model's weights or buffers (or its validation loss) stopped being finite: the run
    fails, keeping the last checkpoint whose model was finite."""


def validate_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first bad option of `config` (FileNotFoundError for
    data that is neither a known name nor a path), by the rules of
    `attnres.training.options_spec.RULES`; nothing is loaded or built."""
    from .options_spec import check_config

    check_config(config)
    _validate_data_options(config)


def _validate_data_options(config: TrainConfig) -> None:
    """The options of how the data is read: loader, workers, mean and std."""
    from ..data.scale import LOADER_KINDS

    if config.loader not in LOADER_KINDS:
        raise ValueError(f"loader={config.loader!r}{closest(str(config.loader), LOADER_KINDS)}"
                         f"; allowed: {', '.join(LOADER_KINDS)}")
    if isinstance(config.workers, bool) or not isinstance(config.workers, int) \
            or config.workers < 0:
        raise ValueError(f"workers={config.workers!r}: must be a whole number >= 0")
    if (config.mean is None) != (config.std is None):
        raise ValueError("mean and std: give both or neither (then they are computed)")
    for name in ("mean", "std"):
        value = getattr(config, name)
        if value is not None and not (isinstance(value, (list, tuple)) and len(value) == 3
                                      and all(isinstance(v, (int, float)) and math.isfinite(v)
                                              for v in value)):
            raise ValueError(f"{name}={value!r}: must be 3 numbers (one per RGB channel)")
    if config.std is not None and min(config.std) <= 0:
        raise ValueError(f"std={config.std!r}: every value must be > 0")


__all__ = ["RESUME_OVERRIDABLE", "NonFiniteLossError", "NonFiniteModelError", "TrainConfig",
           "upgrade_config_dict", "validate_config"]
