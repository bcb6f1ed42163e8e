"""Non-finite weights never become a result: the checks the loop makes after a step it
skipped for a non-finite loss and before it saves an epoch's checkpoints.

A run whose parameters or buffers (or validation loss) are no longer finite fails with
`NonFiniteModelError`; the epoch is not saved, so `last.pt` / `best.pt` keep the last
finite model, and `summary.json` says the run failed.
"""

from __future__ import annotations

import math
from itertools import chain
from pathlib import Path
from typing import Any

from ..checkpoint import nonfinite_names
from ..utils import atomic_write_json
from .config import NonFiniteModelError
from .distributed import all_reduce


def kept_checkpoint(out: Path) -> str:
    """The end of a failure message: which checkpoint is still good."""
    last = out / "last.pt"
    return (f"; last finite checkpoint: {last}" if last.exists()
            else "; no checkpoint was saved before it")


def nonfinite_state(run: Any) -> str:
    """The first parameters / buffers of the run's model holding NaN or inf ("" if none);
    every rank gets the same answer (buffers may differ between ranks)."""
    model = run.raw_model
    names = nonfinite_names(chain(model.named_parameters(), model.named_buffers()))
    if not all_reduce([float(bool(names))], run.ddp, run.device)[0]:
        return ""
    if not names:
        return "on another process"
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_model(run: Any, where: str) -> None:
    """After a skipped step (`where` says which): fail when the model is not finite, as
    every later step would then be skipped too and the run end with a broken model."""
    bad = nonfinite_state(run)
    if bad:
        raise NonFiniteModelError(f"{where}, and the model's weights are no longer finite "
                                  f"({bad}){kept_checkpoint(run.out)}; lower --lr")


def check_epoch(run: Any, row: dict[str, Any]) -> None:
    """Before an epoch's row is kept and its checkpoints saved."""
    bad = nonfinite_state(run)
    loss = row.get("val_loss")
    if bad or (isinstance(loss, float) and not math.isfinite(loss)):
        what = (f"the model's weights are no longer finite ({bad})" if bad
                else f"the validation loss is {loss}")
        raise NonFiniteModelError(f"after epoch {row['epoch']}: {what}; the epoch was not "
                                  f"saved{kept_checkpoint(run.out)}; lower --lr")


def write_failed_summary(run: Any, memory: Any, error: BaseException) -> None:
    """Rank 0: `summary.json` of a run that failed: not finished, failed, and why."""
    if run.ddp.is_main:
        atomic_write_json(run.out / "summary.json",
                          run.summary(memory, finished=False, error=str(error)))


__all__ = ["check_epoch", "check_model", "kept_checkpoint", "nonfinite_state",
           "write_failed_summary"]
