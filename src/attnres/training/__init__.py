"""Training: `TrainConfig` (the options), `train()` (the loop), named recipes, DDP.

    config.py       TrainConfig, validate_config, RESUME_OVERRIDABLE, NonFiniteLossError
    recipe.py       parameter groups, the learning-rate schedule, RECIPES
    loop.py         train(): prepare, restore, then epochs of steps, validation, saving
    distributed.py  process group, all-reduce, batch-norm buffer averaging
    resume.py       seeding, RNG states, what a resumed run may change
    validation.py   loss / top-1 / top-5 on the validation split
    report.py       config.json, metrics.csv, summary.json, TensorBoard, progress lines
    limits.py       fractional epochs, max_steps, max_time, subset, the warm-up cap
    steps.py        skipped non-finite steps, the per-step schedule, --monitor columns
    meters.py       memory, named for what it is;  signals.py: stopping on SIGINT / SIGTERM

Checkpoint files and run folders are read and written by `attnres.checkpoint`.
"""

from __future__ import annotations

from .config import RESUME_OVERRIDABLE, NonFiniteLossError, TrainConfig, validate_config
from .loop import train
from .recipe import (RECIPES, attention_parameter_names, lr_factor, param_groups,
                     recipe_values)

__all__ = ["RECIPES", "RESUME_OVERRIDABLE", "NonFiniteLossError", "TrainConfig",
           "attention_parameter_names", "lr_factor", "param_groups", "recipe_values", "train",
           "validate_config"]
