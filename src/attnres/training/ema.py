"""`--ema DECAY`: an exponential moving average (EMA) of the weights, next to the raw ones.

The average is torch's `AveragedModel` with `get_ema_multi_avg_fn(decay)` and
`use_buffers=True`, so parameters and buffers (batch-norm running statistics) alike follow

    W_0^ema = W_0,   W_t^ema = decay * W_(t-1)^ema + (1 - decay) * W_t

with W_t the raw weights after optimizer step t (steps skipped for a non-finite loss do
not count). Its state is in every checkpoint (`"ema"`), so a resumed run continues it
exactly; `ema.pt` (latest epoch) and `ema-best.pt` (best EMA validation top-1) hold its
weights alone, loadable with `attnres.load_model`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .distributed import average_buffers
from .model_source import model_record
from .validation import validate

if TYPE_CHECKING:
    from .loop import _Run


def make_ema(model: nn.Module, decay: float) -> AveragedModel:
    """An EMA of `model`'s parameters and buffers, starting at their current values.

    Call `ema.update_parameters(model)` after each optimizer step; `ema.module` is the
    averaged network (same class and device as `model`)."""
    if not 0 < decay < 1:
        raise ValueError(f"ema decay={decay!r}: must be in (0, 1), e.g. 0.999")
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    ema.update_parameters(model)  # the first update copies: W_0^ema = W_0
    return ema


def ema_metrics(run: _Run) -> dict[str, float]:
    """The EMA weights' validation loss / top-1 / top-5, as `ema_val_*` columns ({} without
    --ema)."""
    if run.ema is None:
        return {}
    average_buffers(run.ema.module, run.ddp)  # its batch-norm statistics differ per rank
    metrics = validate(run.ema.module, run.val_loader, run.device, run.ddp, run.autocast,
                       run.channels_last, run.config.tta)
    return {f"ema_{key}": value for key, value in metrics.items()}


def save_ema(run: _Run) -> None:
    """Rank 0, after each epoch: `ema.pt`, and `ema-best.pt` when the EMA improved (nothing
    without --ema)."""
    if run.ema is None:
        return
    row = run.metrics[-1]
    state = weights_checkpoint(run, run.ema.module, extra={"ema_decay": run.config.ema})
    save_checkpoint(state, run.out / "ema.pt")
    before = max((r["ema_val_top1"] for r in run.metrics[:-1]), default=-1.0)
    if row["ema_val_top1"] > before:
        save_checkpoint(state, run.out / "ema-best.pt")


def weights_checkpoint(run: _Run, model: nn.Module, extra: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """A weights-only checkpoint of `model` (the EMA or precise-BN weights of the run) that
    `attnres.load_model` rebuilds; it holds no optimizer state and cannot be resumed."""
    return {"format": CHECKPOINT_FORMAT, "model": model.state_dict(),
            **model_record(run.raw_model, run.preprocessing), "epoch": run.metrics[-1]["epoch"],
            "config": asdict(run.config), "preprocessing": run.preprocessing,
            "weights_only": True, **(extra or {})}


__all__ = ["ema_metrics", "make_ema", "save_ema", "weights_checkpoint"]
