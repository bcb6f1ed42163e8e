"""Training: `TrainConfig` (the options), `train()` (the loop), named recipes, DDP.

    config.py       TrainConfig, validate_config, RESUME_OVERRIDABLE, NonFiniteLossError,
                    NonFiniteModelError
    options_spec.py the rule of every TrainConfig field (RULES), checked at the door
    run_folder.py   the run folder's lock, the overwrite rule, path checks
    finite.py       whether a model's weights and buffers are finite
    recipe.py       parameter groups, the learning-rate schedule, RECIPES
    loop.py         train(): prepare, restore, then epochs of steps, validation, saving
    distributed.py  process group, all-reduce, batch-norm buffer averaging
    resume.py       seeding, RNG states, what a resumed run may change
    validation.py   loss / top-1 / top-5 on the validation split
    ema.py          --ema: an EMA of the weights (torch's AveragedModel), ema.pt
    precise_bn.py   precise_bn(): batch-norm statistics recomputed over N batches
    normalisation.py  normalisation_for(): the pretrained weights' mean/std, else the data's
    report.py       config.json, metrics.csv, summary.json, TensorBoard, progress lines
    limits.py       fractional epochs, max_steps, max_time, subset, the warm-up cap
    steps.py        skipped non-finite steps, the per-step schedule, --monitor columns
    meters.py       memory, named for what it is;  signals.py: stopping on SIGINT / SIGTERM

Checkpoint files and run folders are read and written by `attnres.checkpoint`.
"""

from __future__ import annotations

from .config import (RESUME_OVERRIDABLE, NonFiniteLossError, NonFiniteModelError, TrainConfig,
                     upgrade_config_dict, validate_config)
from .loop import train
from .normalisation import normalisation_for
from .recipe import (RECIPES, attention_parameter_names, lr_factor, param_groups,
                     recipe_values)
from .run_folder import RunLockedError

__all__ = ["RECIPES", "RESUME_OVERRIDABLE", "NonFiniteLossError", "NonFiniteModelError",
           "RunLockedError", "TrainConfig", "attention_parameter_names", "lr_factor",
           "normalisation_for", "param_groups", "recipe_values", "train", "upgrade_config_dict",
           "validate_config"]
