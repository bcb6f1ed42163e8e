"""Precise batch norm: recompute every batch-norm layer's running statistics, with the
weights frozen, as the exact average over N training batches.

During training the running mean/var are an exponential average over batches seen by
weights that kept changing; the final weights' own statistics can differ (Wu & Johnson,
"Rethinking 'Batch' in BatchNorm", 2021). `precise_bn` measures them again the way
`torch.optim.swa_utils.update_bn` does (momentum=None: a cumulative average), for a fixed
number of batches. `run_precise_bn` is the trainer's `--precise-bn N` step.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..checkpoint import save_checkpoint
from ..utils import atomic_write_json
from .distributed import average_buffers
from .ema import weights_checkpoint
from .validation import to_device, validate

if TYPE_CHECKING:
    from .loop import _Run


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """Every batch-norm layer of `model` that keeps running statistics (subclasses such as
    SafeBatchNorm2d included)."""
    return [m for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model: nn.Module, loader: Iterable[Any], batches: int) -> int:
    """Recompute the running mean/var of every batch norm in `model` from `batches` batches.

    loader: yields image batches `(B, C, H, W)`, or tuples/lists whose first item is one
        (e.g. `(images, labels)`); batches are moved to the model's device.
    batches: how many batches to average over (fewer when the loader runs out first).

    Each layer's statistics are reset, then averaged with equal weight per batch
    (momentum=None), as `torch.optim.swa_utils.update_bn` does: afterwards `running_mean` is
    the mean over the batches of each batch's per-channel mean of the layer's input, and
    `running_var` the mean of its unbiased per-channel variances. Only the batch norms run
    in training mode; weights are not changed, and every module's mode and each layer's
    momentum are restored. Returns the number of batches used.
    """
    if isinstance(batches, bool) or not isinstance(batches, int) or batches < 1:
        raise ValueError(f"batches={batches!r}: must be a positive integer")
    norms = batch_norms(model)
    if not norms:
        return 0
    first = next(model.parameters(), None)
    device = first.device if first is not None else norms[0].running_mean.device
    modes = {module: module.training for module in model.modules()}
    momenta = {norm: norm.momentum for norm in norms}
    model.eval()  # anything else that differs in training mode (dropout) stays as in eval
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    used = 0
    try:
        for batch in loader:
            if used == batches:
                break
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            model(images.to(device, non_blocking=True))
            used += 1
    finally:
        for norm, momentum in momenta.items():
            norm.momentum = momentum
        for module, training in modes.items():
            module.training = training
    if used == 0:
        raise ValueError("precise_bn: the loader gave no batches")
    return used


def run_precise_bn(run: _Run, summary: dict[str, Any]) -> None:
    """`--precise-bn N` once the last epoch is done: precise batch norm on the final weights
    (and on the EMA weights under --ema), each validated again and saved as `precise-bn.pt`
    (`ema-precise-bn.pt`); the accuracies before and after go into `summary["precise_bn"]`
    and summary.json. Nothing without --precise-bn or before the run is finished."""
    config = run.config
    if not config.precise_bn or not summary["finished"]:
        return
    models = [("", run.raw_model, "precise-bn.pt")]
    if run.ema is not None:
        models.append(("ema_", run.ema.module, "ema-precise-bn.pt"))
    last = run.metrics[-1]
    result: dict[str, Any] = {}
    for prefix, model, name in models:
        # the training loader at a shuffle no epoch used, augmented as in training
        run.train_loader.set_epoch(config.epochs)
        inputs = (to_device(x, y, run.device, run.channels_last)[0]
                  for x, y in run.train_loader)
        with run.autocast():  # the activations that validation sees
            used = precise_bn(model, inputs, min(config.precise_bn, run.steps_per_epoch))
        average_buffers(model, run.ddp)
        after = validate(model, run.val_loader, run.device, run.ddp, run.autocast,
                         run.channels_last, config.tta)
        result.update(batches=used, images=used * config.batch_size)
        for metric in ("val_top1", "val_top5", "val_loss"):
            result[f"{prefix}{metric}_before"] = last[f"{prefix}{metric}"]
            result[f"{prefix}{metric}_after"] = after[metric]
        if run.ddp.is_main:
            save_checkpoint(weights_checkpoint(run, model, extra={"precise_bn": used}),
                            run.out / name)
    summary["precise_bn"] = result
    if run.ddp.is_main:
        atomic_write_json(run.out / "summary.json", summary)
    run.log(f"precise batch norm over {result['batches']} batches: val top-1 "
            f"{result['val_top1_before']:.2f} -> {result['val_top1_after']:.2f}"
            + (f", EMA {result['ema_val_top1_before']:.2f} -> "
               f"{result['ema_val_top1_after']:.2f}" if run.ema is not None else ""))


__all__ = ["batch_norms", "precise_bn", "run_precise_bn"]
