"""`train(config)`: the training loop, read top to bottom.

`train` checks the options and sets up the processes; `_run` builds everything
(`_prepare`), continues from a checkpoint when resuming (`_restore`), then runs the
epochs: `_train_epoch` (steps, each `_train_step`), validation (`validate`), and
`_save_epoch` (checkpoints, metrics, summary). A run folder holds `config.json`, `last.pt`,
`best.pt`, `metrics.csv`, TensorBoard events and `summary.json`; checkpoints hold
everything needed to continue bit-exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import CHECKPOINT_FORMAT
from ..precision import AmpChoice, autocast_context, cpu_bf16_flags, cpu_model, resolve_amp
from . import finite, report
from .config import NonFiniteLossError, TrainConfig, validate_config
from .data_setup import check_resumed_data, load_run_data
from .distributed import (Dist, all_reduce, average_buffers, min_over_ranks, pick_device,
                          setup_distributed, teardown_distributed, wrap_model)
from .ema import ema_metrics, make_ema
from .limits import StepPlan, plan_steps
from .meters import MemoryMeter
from .model_source import make_model, model_record
from .bn_recompute import run_precise_bn
from .recipe import advance_scheduler, make_optimizer, make_scheduler
from .resume import default_out, resolve_resume, rng_state, seed_everything, set_rng_state
from .run_folder import claim_run_folder
from .signals import StopRequest
from .saving import save_epoch, save_interrupted
from .steps import skip_update
from .validation import to_device, validate


def train(config: TrainConfig, model: nn.Module | None = None, *,
          given: Collection[str] | None = None) -> dict[str, Any]:
    """Train a model as `config` says; return the summary (also written to summary.json).

    Raises ValueError for bad options (checked before anything is loaded) or an `out` that
    holds a run (without `resume` / `overwrite`), RunLockedError when another run holds
    `out`, NonFiniteLossError / NonFiniteModelError when the loss or the model stops being
    finite (the last finite checkpoint is kept; summary.json says failed), `Interrupted`
    after saving `last.pt` on SIGINT / SIGTERM. `given`: see `resolve_resume`. `model`:
    train this network (in place) instead of config.arch's, see `training/model_source.py`.
    """
    validate_config(config)
    config, ckpt = resolve_resume(config, given)
    if config.out is None:
        config = dataclasses.replace(config, out=default_out(config))
    validate_config(config)  # the saved run's options and the default folder, too
    out = Path(config.out)
    with claim_run_folder(out, new_run=ckpt is None, overwrite=config.overwrite):
        ddp = setup_distributed(config.device)
        try:
            return _run(config, ckpt, ddp, out, model)
        finally:
            teardown_distributed(ddp)


@dataclass
class _Sums:
    """Running sums of an epoch's training steps (stored in a mid-epoch checkpoint)."""

    loss: float = 0.0
    correct: float = 0.0
    seen: float = 0.0
    step_time: float = 0.0

    def as_list(self) -> list[float]:
        return [self.loss, self.correct, self.seen, self.step_time]


@dataclass
class _Run:
    """Everything a run holds while it runs."""

    config: TrainConfig
    ddp: Dist
    out: Path
    device: torch.device
    raw_model: nn.Module  # the model itself: checkpoints, buffers, the monitor
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    plan: StepPlan                  # how many steps the run takes (limits.py)
    preprocessing: dict[str, Any]
    channels_last: bool
    data_record: dict[str, Any]  # the loader kind and data fingerprint (data_setup)
    amp: AmpChoice                  # the precision config.amp resolved to (precision.py)
    net: nn.Module | None = None    # raw_model, compiled when asked: validation runs on it
    model: nn.Module | None = None  # net, in DDP when distributed: training runs on it
    writer: Any = None              # TensorBoard, rank 0 only
    ema: Any = None                 # AveragedModel of raw_model under --ema (see ema.py)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    nonfinite_steps: int = 0
    start_epoch: int = 0
    start_batch: int = 0            # steps of start_epoch done before an interruption
    partial: _Sums = field(default_factory=_Sums)
    warned: set[str] = field(default_factory=set)
    deadline: float | None = None   # perf_counter() at which max_time runs out
    stop_reason: str | None = None  # "max_time" once it ran out
    cut: list[float] | None = None  # sums of the last epoch when it stopped mid-way

    def log(self, message: str) -> None:
        if self.ddp.is_main and not self.config.quiet:
            report.print_line(message)

    def autocast(self) -> Any:
        return autocast_context(self.amp, self.device)

    def checkpoint(self, epoch: int, batch: int, partial: list[float]) -> dict[str, Any]:
        """What `last.pt` / `best.pt` hold: enough to continue from step `batch` of `epoch`."""
        return {"format": CHECKPOINT_FORMAT, "model": self.raw_model.state_dict(),
                **model_record(self.raw_model, self.preprocessing),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": epoch, "batch": batch, "partial": partial, "rng": rng_state(),
                "config": asdict(self.config), "preprocessing": self.preprocessing,
                "metrics": self.metrics, "nonfinite_steps": self.nonfinite_steps,
                "world_size": self.ddp.world_size, "data": self.data_record,
                **({"ema": self.ema.state_dict()} if self.ema is not None else {})}

    def precision(self) -> dict[str, Any]:
        """What summary.json says of the precision: the choice, why, and the hardware."""
        return {"amp": self.amp.dtype, "reason": self.amp.reason, "device": str(self.device),
                "cpu": cpu_model(), "cpu_bf16_flags": cpu_bf16_flags()}

    def steps_done(self) -> int:
        return int(self.scheduler.last_epoch)  # one scheduler step per optimizer step

    def summary(self, memory: MemoryMeter, *, finished: bool | None = None,
                error: str | None = None) -> dict[str, Any]:
        """summary.json; `finished` by default: the planned steps are done or max_time ran
        out (`StepPlan.status`)."""
        steps = self.plan.status(self.steps_done(), self.stop_reason, finished)
        return {**report.summary(self.config, self.metrics, memory=memory,
                                 finished=steps["stop_reason"] is not None,
                                 params=sum(p.numel() for p in self.raw_model.parameters()),
                                 world_size=self.ddp.world_size, error=error, steps=steps,
                                 normalisation=self.preprocessing.get("normalisation"),
                                 precision=self.precision()),
                "data": self.data_record}


def _run(config: TrainConfig, ckpt: dict | None, ddp: Dist, out: Path,
         model: nn.Module | None = None) -> dict[str, Any]:
    run = _prepare(config, ddp, out, model, ckpt)
    config = run.config  # its loader resolved to "memory" or "stream"
    if ckpt is not None:
        _restore(run, ckpt)
    # validation runs on `net`, never through DDP: ranks may hold different numbers of
    # validation batches, and DDP's forward is a collective (it broadcasts BN buffers)
    run.net = torch.compile(run.raw_model) if config.compile else run.raw_model
    run.model = wrap_model(run.net, ddp, run.device)
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        report.write_config(out, config)
        if config.tensorboard:
            run.writer = report.open_tensorboard(
                out, resumed_at=run.start_epoch if ckpt is not None else None)

    run.log(f"precision: {run.amp.dtype} ({run.amp.reason})")
    best = max((row["val_top1"] for row in run.metrics), default=-1.0)
    memory = MemoryMeter(run.device)
    memory.start()
    if run.plan.warning() and ddp.is_main and not config.quiet:
        report.print_line(f"warning: {run.plan.warning()}")
    if config.max_time is not None:
        run.deadline = time.perf_counter() + config.max_time
    with StopRequest() as stop:
        for epoch in range(run.start_epoch, run.plan.epochs):
            try:
                row = _epoch(run, epoch, stop, memory)
                finite.check_epoch(run, row)  # a non-finite model is never saved
            except NonFiniteLossError as e:
                finite.write_failed_summary(run, memory, e)
                raise
            run.metrics.append(row)
            improved = row["val_top1"] > best
            best = max(best, row["val_top1"])
            save_epoch(run, memory, improved=improved)
            run.log(report.epoch_line(row, run.plan.epochs))
            if run.stop_reason is not None:
                run.log(f"max_time {config.max_time:g} s reached after step "
                        f"{run.steps_done()} of {run.plan.total_steps}: saved {out}")
                break
            if all_reduce([float(stop.requested)], ddp, run.device)[0]:  # every rank stops
                run.log(f"interrupted: saved {out / 'last.pt'} (end of epoch {epoch + 1}); "
                        f"continue with --resume {out}")
                raise stop.interrupted()
    if run.writer is not None:
        run.writer.close()
    summary = run.summary(memory)
    run_precise_bn(run, summary)  # --precise-bn N: adds to summary (and summary.json)
    run.log(f"done: best val top-1 {summary['best_val_top1']:.2f}, last "
            f"{summary['last_val_top1']:.2f}; wrote {out}")
    return summary


def _prepare(config: TrainConfig, ddp: Dist, out: Path, model: nn.Module | None = None,
             ckpt: dict | None = None) -> _Run:
    """Seed, then load the data and build the model, optimizer, loaders and schedule."""
    device = pick_device(config.device, ddp)
    use_cuda = device.type == "cuda"
    if config.batch_size % ddp.world_size:
        raise ValueError(f"batch_size={config.batch_size} does not split evenly over "
                         f"{ddp.world_size} processes; use a multiple of {ddp.world_size}")
    if use_cuda:
        torch.backends.cudnn.benchmark = not config.deterministic
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
    seed_everything(config.seed)
    # "auto" becomes the precision it chose, so config.json, summary.json and the
    # checkpoints say what ran, and a resumed run runs the same arithmetic
    amp = resolve_amp(config.amp, device)
    config = dataclasses.replace(config, amp=amp.dtype)

    run_data = load_run_data(config, ddp, device)  # in memory or streamed (data_setup)
    config, data = run_data.config, run_data.data
    train_loader, val_loader = run_data.train_loader, run_data.val_loader
    raw_model = make_model(config, data.num_classes, model, ckpt)
    preprocessing = run_data.preprocessing  # mean/std: the pretrained weights' or the data's
    # channels_last pays on CUDA and for CPU bf16 (oneDNN's bf16 convolutions are NHWC)
    channels_last = config.channels_last and (use_cuda or amp.enabled)
    raw_model.to(device, memory_format=torch.channels_last if channels_last
                 else torch.preserve_format)
    optimizer = make_optimizer(raw_model, config)
    ema = make_ema(raw_model, config.ema) if config.ema else None
    # every rank must take the same number of steps, or DDP's collectives hang
    steps_per_epoch = min_over_ranks(len(train_loader), ddp, device)
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size={config.batch_size} is larger than the training split "
                         f"({len(data.train.labels)} images); use a smaller batch")

    scaler = torch.amp.GradScaler(device.type, enabled=amp.use_grad_scaler)
    return _Run(
        config=config, ddp=ddp, out=out, device=device, raw_model=raw_model, ema=ema,
        optimizer=optimizer, scheduler=make_scheduler(optimizer, config, steps_per_epoch),
        scaler=scaler, train_loader=train_loader, val_loader=val_loader,
        steps_per_epoch=steps_per_epoch, plan=plan_steps(config, steps_per_epoch),
        channels_last=channels_last, data_record=run_data.record,
        amp=amp,
        preprocessing=preprocessing)


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    """Continue from `ckpt`: weights, optimizer, schedule, RNG states, metrics so far."""
    check_resumed_data(run.data_record, ckpt)
    run.raw_model.load_state_dict(ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    if run.ema is not None:
        run.ema.load_state_dict(ckpt["ema"])
    set_rng_state(ckpt["rng"])
    run.start_epoch, run.start_batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
    run.metrics = list(ckpt["metrics"])
    if run.start_batch and run.metrics and run.metrics[-1]["epoch"] == run.start_epoch + 1:
        # the last row is of an epoch that stopped mid-way (max_time, a fractional epoch)
        if run.start_batch >= run.plan.steps_in(run.start_epoch):
            run.start_epoch, run.start_batch = run.start_epoch + 1, 0  # nothing left of it
        else:
            run.metrics.pop()  # it is trained on, and its row written again
    run.nonfinite_steps = int(ckpt.get("nonfinite_steps", 0))
    if run.start_batch and run.ddp.is_main:  # the interrupted epoch's sums, counted once
        run.partial = _Sums(*ckpt["partial"])
    if ckpt.get("world_size", 1) != run.ddp.world_size:
        run.log(f"warning: the run used {ckpt.get('world_size', 1)} processes, now "
                f"{run.ddp.world_size}: it continues, but not bit-exactly")
    run.log(f"resuming {run.out} at epoch {run.start_epoch + 1}"
            + (f", step {run.start_batch + 1}" if run.start_batch else ""))


def _epoch(run: _Run, epoch: int, stop: StopRequest, memory: MemoryMeter) -> dict[str, Any]:
    """Train one epoch, then validate; the epoch's row of metrics.csv."""
    monitor = None
    if run.config.monitor:
        from ..attention.monitor import AttentionMonitor

        monitor = AttentionMonitor(run.raw_model)
    epoch_start = time.perf_counter()
    lr = run.config.lr * run.scheduler.lr_lambdas[0](epoch * run.steps_per_epoch)
    with monitor if monitor is not None else nullcontext():
        sums = _train_epoch(run, epoch, stop, memory)
    run.partial = _Sums()
    loss, correct, seen = all_reduce([sums.loss, sums.correct, sums.seen], run.ddp, run.device)
    step_time = all_reduce([sums.step_time], run.ddp, run.device)[0] / run.ddp.world_size
    cut = run.steps_done() - epoch * run.steps_per_epoch < run.steps_per_epoch
    run.cut = [loss, correct, seen, step_time] if cut else None
    row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "train_loss": loss / max(seen, 1),
                           "train_top1": 100.0 * correct / max(seen, 1)}
    average_buffers(run.raw_model, run.ddp)
    row.update(validate(run.net, run.val_loader, run.device, run.ddp, run.autocast,
                        run.channels_last, run.config.tta))
    row.update(ema_metrics(run))  # --ema: ema_val_loss, ema_val_top1, ema_val_top5
    row["train_images"] = int(seen)
    row["steps"] = run.steps_done()
    row["train_step_time_s"] = step_time
    row["epoch_time_s"] = time.perf_counter() - epoch_start
    row["train_images_per_s"] = seen / step_time if step_time > 0 else 0.0
    if monitor is not None:
        report.add_gate_statistics(row, monitor.summary(), run.warned, run.log)
    return row


def _train_epoch(run: _Run, epoch: int, stop: StopRequest, memory: MemoryMeter) -> _Sums:
    """The optimizer steps of one epoch (from `start_batch` when resuming inside it)."""
    skip = run.start_batch if epoch == run.start_epoch else 0  # steps done before a stop
    run.train_loader.set_epoch(epoch, start_batch=skip)
    run.model.train()
    sums = dataclasses.replace(run.partial)
    steps = run.plan.steps_in(epoch)  # the last epoch of a fractional run is cut short
    bar = report.progress_bar(steps, initial=skip,
                              desc=f"epoch {epoch + 1}/{run.plan.epochs}",
                              disable=run.config.quiet or not run.ddp.is_main)
    try:
        for step, (images, labels) in enumerate(run.train_loader, start=skip):
            if step >= steps:
                break
            stop_asked, time_up = _train_step(run, images, labels, sums, stop, epoch, step)
            bar.update(1)
            if step % 10 == 0 and sums.seen:
                bar.set_postfix(loss=f"{sums.loss / sums.seen:.3f}",
                                acc=f"{100 * sums.correct / sums.seen:.1f}",
                                img_s=f"{sums.seen * run.ddp.world_size / sums.step_time:.0f}")
            if time_up:  # after this step: the epoch's row and checkpoint say where
                run.stop_reason = "max_time"
                break
            if stop_asked and step + 1 < steps:
                bar.close()
                save_interrupted(run, memory, epoch, step + 1, sums)
                raise stop.interrupted()
    finally:
        bar.close()
    return sums


def _train_step(run: _Run, images: torch.Tensor, labels: torch.Tensor, sums: _Sums,
                stop: StopRequest, epoch: int, step: int) -> tuple[bool, bool]:
    """One optimizer step on a batch `(B, C, H, W)`, `(B,)`, added to `sums`; a non-finite
    loss skips the update (or stops the run). Returns whether any rank was asked to stop,
    and whether max_time has run out on any rank."""
    t0 = time.perf_counter()
    images, labels = to_device(images, labels, run.device, run.channels_last)
    with run.autocast():
        logits = run.model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=run.config.label_smoothing)
    loss_value = loss.item()
    time_up = run.deadline is not None and time.perf_counter() >= run.deadline
    nonfinite, stop_asked, time_up = all_reduce(
        [float(not math.isfinite(loss_value)), float(stop.requested), float(time_up)],
        run.ddp, run.device)
    if nonfinite:
        skip_update(run, loss_value, epoch, step)
    else:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        advance_scheduler(run.scheduler)
        if run.ema is not None:
            run.ema.update_parameters(run.raw_model)
        sums.loss += loss_value * labels.numel()
        sums.correct += (logits.argmax(1) == labels).sum().item()
        sums.seen += labels.numel()
    sums.step_time += time.perf_counter() - t0
    return bool(stop_asked), bool(time_up)


__all__ = ["train"]
