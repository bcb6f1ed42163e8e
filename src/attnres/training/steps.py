"""A training step that does not update: a non-finite loss on some rank skips the update,
or stops the run (`NonFiniteLossError`) once more than `skip_nonfinite` were skipped."""

from __future__ import annotations

from typing import Any

from . import finite
from .config import NonFiniteLossError
from .recipe import advance_scheduler


def skip_update(run: Any, loss_value: float, epoch: int, step: int) -> None:
    """A step whose loss was NaN/inf on some rank: no update, or NonFiniteLossError once
    more than `skip_nonfinite` such steps were seen."""
    run.nonfinite_steps += 1
    where = (f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {step + 1} (global "
             f"step {epoch * run.steps_per_epoch + step + 1})")
    if run.nonfinite_steps > run.config.skip_nonfinite:
        raise NonFiniteLossError(f"{where}{finite.kept_checkpoint(run.out)}; lower --lr, or "
                                 f"pass --skip-nonfinite N to skip up to N such steps")
    finite.check_model(run, where)  # broken weights: every later step would be skipped
    run.log(f"warning: {where}: update skipped ({run.nonfinite_steps}/"
            f"{run.config.skip_nonfinite} allowed)")
    run.optimizer.zero_grad(set_to_none=True)
    advance_scheduler(run.scheduler)


__all__ = ["skip_update"]
