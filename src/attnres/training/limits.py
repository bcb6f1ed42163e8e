"""How long a run is: fractional epochs, `max_steps`, `max_time`, a training subset, and the
warm-up cap.

A run of `epochs` epochs takes `round(epochs * steps_per_epoch)` optimizer steps (at least
one), so `epochs=0.1` is a tenth of an epoch's steps; `max_steps` caps that number. The
learning-rate schedule spans exactly those steps (cosine reaches 0 at the last one).
`max_time` is different: it is not known in advance which step it stops at, so it does not
shorten the schedule; the run stops after the step during which the time ran out.

The warm-up is at most `WARMUP_MAX_FRACTION` of the run's steps: a 10-step run with one
epoch of warm-up would otherwise never reach its peak learning rate. A capped warm-up is
reported once, as a warning.

`subset` keeps a stratified, seeded part of the training split (`split_seed`, so every seed
of an ablation trains on the same images; the validation split is untouched).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

WARMUP_MAX_FRACTION = 0.25


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """The steps of a run: `total_steps` optimizer steps in epochs of `steps_per_epoch`."""

    steps_per_epoch: int
    total_steps: int
    warmup_steps: int             # after the cap
    configured_warmup_steps: int  # round(warmup_epochs * steps_per_epoch)
    limited_by: str               # "epochs" or "max_steps"

    @property
    def epochs(self) -> int:
        """Epochs the run enters (the last one may be cut short)."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def steps_in(self, epoch: int) -> int:
        """Steps of epoch `epoch` (0-based): a whole epoch, or what is left of the run."""
        return max(0, min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch))

    def warning(self) -> str | None:
        """The one-line warning for a capped warm-up, or None."""
        if self.warmup_steps == self.configured_warmup_steps:
            return None
        fraction = "1/4" if WARMUP_MAX_FRACTION == 0.25 else f"{WARMUP_MAX_FRACTION:g}"
        shorter = (" (the run is shorter than its warm-up)"
                   if self.total_steps <= self.configured_warmup_steps else "")
        return (f"warm-up of {self.configured_warmup_steps} steps is more than {fraction} of "
                f"this {self.total_steps}-step run{shorter}: capped at {self.warmup_steps} "
                f"steps; lower --warmup-epochs to silence this")

    def status(self, done: int, stop_reason: str | None, finished: bool | None = None
               ) -> dict[str, Any]:
        """The steps of summary.json after `done` steps: the plan, and why the run stopped
        ("epochs", "max_steps", "max_time"; None while it is not finished). `finished`
        False forces None (an interrupted run)."""
        if finished is False:
            reason = None
        else:
            reason = self.limited_by if done >= self.total_steps else stop_reason
        return {"steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps,
                "warmup_steps": self.warmup_steps, "done": done, "stop_reason": reason}


def plan_steps(config: Any, steps_per_epoch: int) -> StepPlan:
    """The `StepPlan` of a `TrainConfig` whose loader has `steps_per_epoch` batches."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch={steps_per_epoch}: must be >= 1")
    by_epochs = max(1, int(config.epochs * steps_per_epoch + 0.5))  # round half up
    max_steps = getattr(config, "max_steps", None)
    total = by_epochs if max_steps is None else min(by_epochs, int(max_steps))
    configured = int(config.warmup_epochs * steps_per_epoch + 0.5)
    cap = int(WARMUP_MAX_FRACTION * total)
    return StepPlan(steps_per_epoch=steps_per_epoch, total_steps=total,
                    warmup_steps=min(configured, cap), configured_warmup_steps=configured,
                    limited_by="max_steps" if total < by_epochs else "epochs")


def subset_indices(labels: torch.Tensor, subset: int, seed: int) -> torch.Tensor | None:
    """Sorted indices of a stratified `subset` of images with labels `(N,)`, drawn with
    `seed`; None when `subset` covers every image."""
    from ..data.splits import stratified_split

    n = int(labels.numel())
    if subset >= n:
        return None
    # the "validation" part of a stratified split is the stratified sample asked for
    return stratified_split(labels, subset, seed=seed)[1]


def apply_subset(data: Any, subset: int | None, seed: int) -> Any:
    """`data` (an `ImageData`) with its training split cut to a stratified `subset`
    (`subset_indices`); the validation split, classes and statistics stay as they are."""
    if subset is None:
        return data
    keep = subset_indices(data.train.labels, subset, seed)
    if keep is None:
        return data
    train = dataclasses.replace(data.train, images=data.train.images[keep],
                                labels=data.train.labels[keep])
    info = {**data.info, "train_subset": {"images": int(keep.numel()), "of": len(data.train),
                                          "seed": int(seed)}}
    return dataclasses.replace(data, train=train, info=info)


__all__ = ["WARMUP_MAX_FRACTION", "StepPlan", "apply_subset", "plan_steps", "subset_indices"]
