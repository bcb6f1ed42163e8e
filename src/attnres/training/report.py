"""What a run leaves behind and prints: `config.json`, `metrics.csv`, `summary.json`,
TensorBoard scalars, the progress bar and the per-epoch line.

Every file goes through `attnres.utils.atomic_write`, so a killed run leaves whole files.
"""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import asdict
from pathlib import Path
from collections.abc import Callable
from typing import Any

import torch

from ..utils import atomic_write, atomic_write_json
from .config import TrainConfig
from .meters import MemoryMeter


def summary(config: TrainConfig, metrics: list[dict[str, Any]], *, params: int,
            memory: MemoryMeter, world_size: int, finished: bool,
            normalisation: str | None = None, error: str | None = None,
            steps: dict[str, Any] | None = None,
            precision: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's `summary.json`: best and last validation accuracy (%), cost, the steps
    (`limits.StepPlan.status`: planned, done, and why the run stopped), the precision
    (`amp`, the reason it was chosen, the CPU and its bf16 flags), versions, config;
    `normalisation` says where the input mean/std came from; `failed` and `error` (None, or
    why the run failed: its model or loss stopped being finite)."""
    best_row = max(metrics, key=lambda r: r["val_top1"], default=None)
    last_row = metrics[-1] if metrics else None
    train_time = sum(r["epoch_time_s"] for r in metrics)
    step_time = sum(r["train_step_time_s"] for r in metrics)
    images = sum(r["train_images"] for r in metrics)
    return {
        "best_val_top1": best_row["val_top1"] if best_row else None,
        "best_val_top5": best_row["val_top5"] if best_row else None,  # of the best-top-1 epoch
        "best_epoch": best_row["epoch"] if best_row else None,
        "last_val_top1": last_row["val_top1"] if last_row else None,
        "last_val_top5": last_row["val_top5"] if last_row else None,
        # with --tta: the last epoch's top-1 without it, beside the TTA top-1 above
        **({"last_val_top1_no_tta": last_row["val_top1_no_tta"]}
           if last_row and "val_top1_no_tta" in last_row else {}),
        **_ema_summary(metrics),
        "params": params,
        "train_time_s": train_time,
        "train_images_per_s": images / step_time if step_time > 0 else None,
        "peak_train_mem_mb": memory.peak_mb(),  # None on CPU: see MemoryMeter
        "peak_train_mem_method": memory.method,
        "process_peak_rss_mb": memory.process_peak_rss_mb(),
        "threads": torch.get_num_threads(),
        "epochs": len(metrics),
        "finished": finished,
        "failed": error is not None,
        "error": error,
        "steps": steps,
        "world_size": world_size,
        "normalisation": normalisation,
        "precision": precision,
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__},
        "config": asdict(config),
    }


def _ema_summary(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Best and last validation top-1 of the EMA weights (--ema); {} without."""
    rows = [r for r in metrics if "ema_val_top1" in r]
    if not rows:
        return {}
    best = max(rows, key=lambda r: r["ema_val_top1"])
    return {"best_ema_val_top1": best["ema_val_top1"], "best_ema_epoch": best["epoch"],
            "last_ema_val_top1": rows[-1]["ema_val_top1"]}


def write_config(out: Path, config: TrainConfig) -> None:
    """`out/config.json`: the resolved options of the run."""
    atomic_write_json(out / "config.json", asdict(config))


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """`out/metrics.csv`: one row per epoch; columns in order of first appearance."""
    columns: list[str] = []
    for row in rows:
        columns += [key for key in row if key not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "metrics.csv", buffer.getvalue())


def open_tensorboard(out: Path, *, resumed_at: int | None) -> Any:
    """A TensorBoard writer for `out`; on resume, events after epoch `resumed_at` that an
    interrupted run had written are dropped."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out), purge_step=resumed_at + 1 if resumed_at is not None
                         else None)


def log_scalars(writer: Any, row: dict[str, Any]) -> None:
    """One epoch's row as TensorBoard scalars at step `row["epoch"]`."""
    for key, value in row.items():
        if key != "epoch":
            writer.add_scalar(key, value, row["epoch"])
    writer.flush()


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The line printed after each epoch."""
    ema = f" (EMA {row['ema_val_top1']:.2f})" if "ema_val_top1" in row else ""
    return (f"epoch {row['epoch']}/{epochs}: train loss {row['train_loss']:.4f} "
            f"top-1 {row['train_top1']:.2f} | val loss {row['val_loss']:.4f} top-1 "
            f"{row['val_top1']:.2f} top-5 {row['val_top5']:.2f}{ema} | "
            f"{row['train_images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f} s")


def progress_bar(total: int, *, initial: int, desc: str, disable: bool) -> Any:
    """A tqdm bar on stderr, shown only on a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True,
                disable=disable or not sys.stderr.isatty())


def print_line(message: str) -> None:
    """A line on stderr that does not break a progress bar."""
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)


def add_gate_statistics(row: dict[str, Any], summary: dict[str, dict[str, Any]],
                        warned: set[str], log: Callable[[str], None]) -> None:
    """--monitor: each gate's statistics as columns of `row`; a warning (through `log`) the
    first time a gate saturates (`warned` remembers which)."""
    from ..attention.monitor import find_saturation

    for module_name, stats in summary.items():
        for stat, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                row[f"{module_name}/{stat}"] = float(value)
    for message in find_saturation(summary):
        key = ":".join(message.split(":")[:2])  # "<module>: <what>", without the numbers
        if key not in warned:
            warned.add(key)
            log(f"warning: {message}")


__all__ = ["epoch_line", "log_scalars", "open_tensorboard", "print_line", "progress_bar",
           "summary", "write_config", "write_metrics"]
