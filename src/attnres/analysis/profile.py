"""Static figures of a model: parameters and FLOPs."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode (counts convolutions and matrix "
                "products, 2 FLOPs per multiply-add; ignores pooling, sigmoid, softmax and "
                "elementwise products, so it understates attention's real cost)")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Forward FLOPs for one input of `input_shape` `(B, C, H, W)`, see `FLOP_COUNTER`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())
