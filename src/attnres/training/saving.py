"""What a run writes at the end of each epoch and when it is interrupted inside one (rank 0
only): last.pt / best.pt, the best weights as a saved model, EMA weights, metrics.csv,
TensorBoard scalars and summary.json."""

from __future__ import annotations

from typing import Any

from ..checkpoint import save_checkpoint
from ..model_files import save_model
from ..utils import atomic_write_json
from . import report
from .distributed import all_reduce
from .ema import save_ema
from .meters import MemoryMeter


def save_epoch(run: Any, memory: MemoryMeter, *, improved: bool) -> None:
    """Rank 0, after each epoch: last.pt (and best.pt), metrics.csv, TensorBoard, summary."""
    if not run.ddp.is_main:
        return
    epoch = run.metrics[-1]["epoch"]
    if run.cut is None:
        state = run.checkpoint(epoch, 0, type(run.partial)().as_list())
    else:  # stopped inside the epoch: a resume (more epochs, more time) continues there
        state = run.checkpoint(epoch - 1, run.steps_done() - (epoch - 1) * run.steps_per_epoch,
                               run.cut)
    save_checkpoint(state, run.out / "last.pt")
    if improved:
        save_checkpoint(state, run.out / "best.pt")
        save_model(run.raw_model, run.out, preprocessing=run.preprocessing)
    save_ema(run)
    report.write_metrics(run.out, run.metrics)
    if run.writer is not None:
        report.log_scalars(run.writer, run.metrics[-1])
    atomic_write_json(run.out / "summary.json", run.summary(memory))


def save_interrupted(run: Any, memory: MemoryMeter, epoch: int, batch: int,
                      sums: Any) -> None:
    """SIGINT/SIGTERM inside an epoch: last.pt at step `batch`, with the epoch's sums."""
    partial = all_reduce(sums.as_list(), run.ddp, run.device)
    partial[3] /= run.ddp.world_size  # step time: the mean over ranks, not the sum
    if run.ddp.is_main:
        save_checkpoint(run.checkpoint(epoch, batch, partial), run.out / "last.pt")
        atomic_write_json(run.out / "summary.json", run.summary(memory, finished=False))
    run.log(f"interrupted: saved {run.out / 'last.pt'} (epoch {epoch + 1}, step {batch}); "
            f"continue with --resume {run.out}")


__all__ = ["save_epoch", "save_interrupted"]
