"""What a training step may do besides the update: skip a non-finite loss (or stop the
run), advance the per-step schedule, and turn `--monitor` statistics into metrics columns.

`run` is the loop's `_Run` (its config, optimizer, scheduler, out folder and `log`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from .config import NonFiniteLossError


def skip_update(run: Any, loss_value: float, epoch: int, step: int) -> None:
    """A step whose loss was NaN/inf on some rank: no update, or NonFiniteLossError once
    more than `skip_nonfinite` such steps were seen."""
    run.nonfinite_steps += 1
    where = (f"non-finite loss ({loss_value}) at epoch {epoch + 1}, step {step + 1} (global "
             f"step {epoch * run.steps_per_epoch + step + 1})")
    if run.nonfinite_steps > run.config.skip_nonfinite:
        last = run.out / "last.pt"
        kept = (f"; last good checkpoint: {last}" if last.exists()
                else "; no checkpoint was saved before it")
        raise NonFiniteLossError(f"{where}{kept}; lower --lr, or pass --skip-nonfinite N to "
                                 f"skip up to N such steps")
    run.log(f"warning: {where}: update skipped ({run.nonfinite_steps}/"
            f"{run.config.skip_nonfinite} allowed)")
    run.optimizer.zero_grad(set_to_none=True)
    advance(run.scheduler)


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One scheduler step; the schedule counts steps, skipped updates included."""
    with warnings.catch_warnings():  # torch warns when a skipped first update precedes it
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*optimizer.step")
        scheduler.step()


def add_gate_statistics(run: Any, row: dict[str, Any],
                         summary: dict[str, dict[str, Any]]) -> None:
    """--monitor: each gate's statistics as columns of `row`; a warning the first time a
    gate saturates."""
    from ..analysis.monitor import find_saturation

    for module_name, stats in summary.items():
        for stat, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{module_name}/{stat}"] = float(value)
    for message in find_saturation(summary):
        key = ":".join(message.split(":")[:2])  # "<module>: <what>", without the numbers
        if key not in run.warned:
            run.warned.add(key)
            run.log(f"warning: {message}")


__all__ = ["add_gate_statistics", "advance", "skip_update"]
