"""Validation during training: loss, top-1 and top-5 over the whole validation split,
summed over every process, optionally with test-time augmentation (TTA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .options_spec import TTA_MODES
from .distributed import Dist, all_reduce


def tta_logits(net: nn.Module, images: torch.Tensor, tta: str) -> tuple[torch.Tensor,
                                                                       torch.Tensor]:
    """`(logits, plain_logits)` of `(B, C, H, W)` images, both `(B, classes)` in float32:
    with tta "flip" the mean of the image's and its mirror's logits, and the image's alone."""
    plain = net(images).float()
    if tta == "none":
        return plain, plain
    if tta != "flip":
        raise ValueError(f"tta={tta!r}: must be one of {', '.join(TTA_MODES)}")
    return (plain + net(images.flip(3)).float()) / 2, plain


def to_device(images: torch.Tensor, labels: torch.Tensor, device: torch.device,
              channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch `(B, C, H, W)`, `(B,)` on `device`, images channels_last when asked."""
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


@torch.no_grad()
def validate(net: nn.Module, loader: Any, device: torch.device, ddp: Dist,
             autocast: Callable[[], Any], channels_last: bool, tta: str = "none"
             ) -> dict[str, float]:
    """Mean loss (without label smoothing), top-1 and top-5 (%) over the whole val split;
    with `tta` "flip" of the averaged logits (`tta_logits`), plus `val_top1_no_tta`.

    `net` runs in eval mode on this process's share of `loader`; the sums are reduced over
    all processes, so each image counts once however unevenly the shares split.
    """
    net.eval()
    loss_sum = correct1 = correct5 = count = plain1 = 0.0
    for images, labels in loader:
        images, labels = to_device(images, labels, device, channels_last)
        with autocast():
            logits, plain = tta_logits(net, images, tta)
        plain1 += (plain.argmax(dim=1) == labels).sum().item()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += labels.numel()
    loss_sum, correct1, correct5, count, plain1 = all_reduce(
        [loss_sum, correct1, correct5, count, plain1], ddp, device)
    count = max(count, 1.0)
    result = {"val_loss": loss_sum / count, "val_top1": 100.0 * correct1 / count,
              "val_top5": 100.0 * correct5 / count}
    if tta != "none":
        result["val_top1_no_tta"] = 100.0 * plain1 / count
    return result


__all__ = ["TTA_MODES", "to_device", "tta_logits", "validate"]
