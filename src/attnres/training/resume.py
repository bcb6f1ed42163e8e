"""Continuing a run: seeding, the random-number states a checkpoint keeps, and which
options a resumed run takes from the saved one.

RNG states are stored as plain tensors and numbers, so that `torch.load(weights_only=True)`
accepts them and a resumed CPU run continues bit-exactly.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Collection
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, check_checkpoint, checkpoint_file, load_checkpoint
from ..precision import amp_request
from .config import RESUME_OVERRIDABLE, TrainConfig, upgrade_config_dict
from .run_folder import run_files


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every generator a run draws from, as tensors and plain data."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": [version, list(internal), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


def resolve_resume(config: TrainConfig, given: Collection[str] | None = None
                   ) -> tuple[TrainConfig, dict | None]:
    """The config to run with and the checkpoint to continue from (None for a new run).

    A run folder continues from its last.pt, which is checked first (`check_checkpoint`).
    Options in `RESUME_OVERRIDABLE` may change. Every other option that was *given* must
    equal the saved run's value, or the resume is refused naming both values; options not
    given take the saved values (so `--resume RUN` alone continues the run as it was).
    `given` names the options given (the CLI passes the ones on its command line, so
    `--lr 0.1` counts even when 0.1 is the default); None means the fields that differ from
    `TrainConfig`'s defaults, as a dataclass cannot tell a default left alone from one
    passed on purpose. `max_time` is the one exception: it limits this call only, so a
    resumed run has none unless given.
    """
    if config.resume is None:
        return config, None
    try:
        file = checkpoint_file(config.resume, names=("last.pt",))
        ckpt = load_checkpoint(file)
    except FileNotFoundError as e:
        hint = ("; it holds no checkpoint yet: start it again with --overwrite"
                if Path(config.resume).is_dir() and run_files(Path(config.resume)) else "")
        raise FileNotFoundError(f"resume={config.resume!r}: {e}{hint}") from None
    check_checkpoint(ckpt, file, training=True)
    saved_values = upgrade_config_dict(ckpt["config"])  # an older attnres's fields
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved_values) - known)
    if unknown:
        raise CheckpointError(f"{file}: its config has options this version does not know: "
                              f"{', '.join(unknown)}")
    saved = TrainConfig(**saved_values)
    defaults = TrainConfig()
    if given is None:
        given = {f.name for f in dataclasses.fields(TrainConfig)
                 if getattr(config, f.name) != getattr(defaults, f.name)}
    for name in sorted(set(given) - RESUME_OVERRIDABLE):
        value, before = getattr(config, name), getattr(saved, name)
        if name == "amp" and amp_request(value) == "auto":
            continue  # the run records what "auto" chose; it continues in that precision
        if value != before:
            raise ValueError(f"cannot change {name} when resuming (run has {before!r}, "
                             f"given {value!r}); start a new run with another --out instead")
    overrides = {name: getattr(config, name) for name in RESUME_OVERRIDABLE
                 if name in given}
    overrides["out"] = config.out if config.out is not None else str(file.parent)
    overrides["resume"] = config.resume
    overrides["overwrite"] = False  # a resumed run continues its folder, never replaces it
    overrides["max_time"] = config.max_time  # a budget for this call, not kept from the last
    return dataclasses.replace(saved, **overrides), ckpt


def default_out(config: TrainConfig) -> str:
    """The run folder of a run given no `out`: runs/ARCH-ATTENTION-sSEED."""
    return f"runs/{config.arch}-{config.attention or 'none'}-s{config.seed}"


__all__ = ["default_out", "resolve_resume", "rng_state", "seed_everything", "set_rng_state"]
