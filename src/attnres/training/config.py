"""The options of a training run: `TrainConfig`, their validation, and the errors of a run.

`TrainConfig` is one flat dataclass: the CLI fills it, `config.json` and every checkpoint
store it (as a dict), and `--resume` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

    # optimisation
    epochs: int = 30
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
    overwrite: bool = False                  # a new run may replace the run in `out`
    monitor: bool = False                    # log attention statistics per epoch
    skip_nonfinite: int = 0                  # tolerate this many non-finite-loss steps
    tensorboard: bool = True
    quiet: bool = False
    recipe: str | None = None                # the named recipe the options started from


# Options that may change when a run is resumed; all others must match the saved run or be
# left at their defaults (then the saved values are used).
RESUME_OVERRIDABLE = {"epochs", "out", "resume", "overwrite", "device", "compile", "monitor",
                      "skip_nonfinite", "tensorboard", "quiet"}


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


__all__ = ["RESUME_OVERRIDABLE", "NonFiniteLossError", "NonFiniteModelError", "TrainConfig",
           "validate_config"]
