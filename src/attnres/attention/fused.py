"""Memory-lean building blocks for the fast attention paths.

The eager CBAM keeps, for the backward pass, the input `x`, the channel-gated map `x * gc`
and more full-size tensors per module. The functions here save only `x` (which the
channel-gate pooling saves anyway, so it is shared) and the small gate tensors, and
recompute what they need in backward:

- `gate_product(x, gc, gs, identity)`: `x * gc * gs`, or `relu(x * gc * gs + identity)` when
  the product is folded into a residual block's add and ReLU.
- `gated_channel_pool(x, gc)`: `[mean over C; max over C]` of `x * gc`, `(B, 2, H, W)`,
  without keeping `x * gc` for backward.
- `avg_max_pool(x)`: CBAM's global average and max pooling `(2, B, C)`, whose backward
  writes the input gradient in one pass instead of autograd's several copies.
- `spatial_conv(pooled, conv)`: the 2 -> 1 channel convolution of CBAM's spatial gate,
  routed around oneDNN's slow handling of a 2-channel input on CPU.

Shapes: `x (B, C, H, W)`, `gc (B, C, 1, 1)`, `gs (B, 1, H, W)`. Everything works for
contiguous and channels_last tensors.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing


def use_fast_path() -> bool:
    """False while tracing, scripting, compiling or exporting: those get the plain ops."""
    if torch.jit.is_scripting() or torch.jit.is_tracing() or is_fx_symbolic_tracing():
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return True
    for probe in ("is_compiling", "is_exporting", "is_dynamo_compiling"):
        fn = getattr(compiler, probe, None)
        if fn is not None and fn():
            return False
    return True


def _layout(t: torch.Tensor) -> torch.memory_format:
    """channels_last if `t` is stored that way (and not also contiguous), else contiguous."""
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A 3-D view of `t (B, C, H, W)` without copying: `(B, H*W, C)` if `t` is channels_last,
    else `(B, C, H*W)`; the flag says which."""
    b, c, h, w = t.shape
    if not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return t.reshape(b, c, h * w), False


def sum_hw_weighted(t: torch.Tensor, w_hw: torch.Tensor) -> torch.Tensor:
    """`(t * w_hw).sum((2, 3), keepdim=True)` as one batched matrix product, no temporary:
    `t (B, C, H, W)`, `w_hw (B, 1, H, W)` -> `(B, C, 1, 1)`."""
    b, c = t.shape[:2]
    rows, last = _rows(t)
    weights = w_hw.reshape(b, -1, 1).to(t.dtype)
    out = (weights.transpose(1, 2) @ rows) if last else (rows @ weights)
    return out.reshape(b, c, 1, 1)


def sum_c_weighted(t: torch.Tensor, w_c: torch.Tensor) -> torch.Tensor:
    """`(t * w_c).sum(1, keepdim=True)` as one batched matrix product, no temporary:
    `t (B, C, H, W)`, `w_c (B, C, 1, 1)` -> `(B, 1, H, W)`."""
    b, _, h, w = t.shape
    rows, last = _rows(t)
    weights = w_c.reshape(b, -1, 1).to(t.dtype)
    out = (rows @ weights) if last else (weights.transpose(1, 2) @ rows)
    return out.reshape(b, 1, h, w)


class _GateProduct(torch.autograd.Function):
    """`x * gc * gs` (either gate may be None), plus `identity` then ReLU when given.
    Saves `x`, the gates and (with a residual) the output, never `x * gc`."""

    @staticmethod
    def forward(ctx, x, gc, gs, identity):  # type: ignore[override]
        out = x * gc if gc is not None else x * gs
        if gc is not None and gs is not None:
            out.mul_(gs)
        if identity is not None:
            out.add_(identity).relu_()
        ctx.has = (gc is not None, gs is not None, identity is not None)
        ctx.save_for_backward(x, gc, gs, out if identity is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, gc, gs, out = ctx.saved_tensors
        if out is not None:  # through the ReLU: zero where the output was clamped
            grad = grad * (out > 0)
        grad_x = grad_gc = grad_gs = None
        if ctx.needs_input_grad[0]:
            grad_x = grad * gc if gc is not None else grad * gs
            if gc is not None and gs is not None:
                grad_x.mul_(gs)
        if ctx.needs_input_grad[1]:
            # d/dgc = sum over H, W of grad * x * gs
            gx = grad * x
            grad_gc = (sum_hw_weighted(gx, gs) if gs is not None
                       else gx.sum((2, 3), keepdim=True))
            if ctx.needs_input_grad[2]:
                grad_gs = sum_c_weighted(gx, gc)
        elif ctx.needs_input_grad[2]:
            gx = grad * x
            grad_gs = sum_c_weighted(gx, gc) if gc is not None else gx.sum(1, keepdim=True)
        grad_identity = grad if ctx.has[2] and ctx.needs_input_grad[3] else None
        return grad_x, grad_gc, grad_gs, grad_identity


def gate_product(x: torch.Tensor, gc: torch.Tensor | None, gs: torch.Tensor | None,
                 identity: torch.Tensor | None = None) -> torch.Tensor:
    """`x * gc * gs` `(B, C, H, W)`; with `identity` `(B, C, H, W)`:
    `relu(x * gc * gs + identity)`. `gc (B, C, 1, 1)` or None, `gs (B, 1, H, W)` or None.

    Under autograd only `x`, the gates and (with `identity`) the output are kept for backward.
    Without autograd the product is computed with one new tensor, updated in place.
    """
    if gc is None and gs is None:
        raise ValueError("gate_product needs at least one of gc, gs")
    if torch.is_grad_enabled() and use_fast_path():
        return _GateProduct.apply(x, gc, gs, identity)
    out = x * gc if gc is not None else x * gs
    if gc is not None and gs is not None:
        out = out.mul_(gs) if not out.requires_grad else out * gs
    if identity is not None:
        out = torch.relu(out + identity) if out.requires_grad else out.add_(identity).relu_()
    return out


class _GatedChannelPool(torch.autograd.Function):
    """`[mean_C(x * gc); max_C(x * gc)]`, keeping `x`, `gc` and the max for backward."""

    @staticmethod
    def forward(ctx, x, gc):  # type: ignore[override]
        gated = x * gc
        maxima = gated.amax(1, keepdim=True)
        pooled = torch.cat([gated.mean(1, keepdim=True), maxima], dim=1)
        ctx.save_for_backward(x, gc, maxima)
        return pooled

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, gc, maxima = ctx.saved_tensors
        channels = x.shape[1]
        grad = grad.contiguous(memory_format=_layout(x))  # tiny; keeps the big grads in x's
        grad_mean, grad_max = grad[:, :1], grad[:, 1:]
        # As amax does: the gradient of a max is shared equally among tied maxima. The mask
        # is made as floats: summing a bool mask costs a full-size cast copy.
        weight = torch.eq(x * gc, maxima, out=torch.empty_like(x))
        share = grad_max / weight.sum(1, keepdim=True)
        # weight (B, C, H, W) of every element in the pooled outputs' gradient
        torch.addcmul(grad_mean / channels, weight, share, out=weight)
        grad_x = weight * gc if ctx.needs_input_grad[0] else None
        grad_gc = None
        if ctx.needs_input_grad[1]:
            grad_gc = weight.mul_(x).sum((2, 3), keepdim=True)
        return grad_x, grad_gc


class _AvgMaxPool(torch.autograd.Function):
    """`[mean over H, W; max over H, W]` of `x`, `(B, C, H, W) -> (2, B, C)`, with a backward
    that writes the input gradient in one pass (autograd's mean + amax backward make
    several full-size temporaries and copies)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        maxima = x.amax((2, 3))
        ctx.save_for_backward(x, maxima)
        return torch.stack([x.mean((2, 3)), maxima])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, maxima = ctx.saved_tensors
        grad_avg = (grad[0] / (x.shape[2] * x.shape[3]))[:, :, None, None]
        grad_max = grad[1][:, :, None, None]
        # as amax does: tied maxima share the gradient equally (float mask: see above)
        weight = torch.eq(x, maxima[:, :, None, None], out=torch.empty_like(x))
        share = grad_max / weight.sum((2, 3), keepdim=True)
        return torch.addcmul(grad_avg, weight, share, out=weight)


def avg_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average and max pooling, `(B, C, H, W) -> (2, B, C)` ([avg; max])."""
    if torch.is_grad_enabled() and use_fast_path():
        return _AvgMaxPool.apply(x)
    return torch.stack([x.mean((2, 3)), x.amax((2, 3))])


def gated_channel_pool(x: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """Mean and max over channels of `x * gc`: `(B, C, H, W), (B, C, 1, 1) -> (B, 2, H, W)`,
    in that order ([mean; max], as CBAM's spatial gate takes them)."""
    if torch.is_grad_enabled() and use_fast_path():
        return _GatedChannelPool.apply(x, gc)
    gated = x * gc
    return torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)


def spatial_conv(pooled: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(pooled)` for CBAM's 2 -> 1 channel spatial convolution `(B, 2, H, W) ->
    (B, 1, H, W)`, on CPU routed to the kernels that handle such a thin input well.

    Measured on 2 CPU cores (torch 2.x, oneDNN): without autograd the native kernel takes
    2-6x less time than oneDNN's (switched off around this one call); with autograd,
    oneDNN's backward on a channels_last input takes 3x less than on a contiguous one (the
    2-channel copy is negligible)."""
    if pooled.device.type != "cpu" or not use_fast_path():
        return conv(pooled)
    if torch.is_grad_enabled() and (pooled.requires_grad or conv.weight.requires_grad):
        return conv(pooled.contiguous(memory_format=torch.channels_last))
    if not torch._C._get_mkldnn_enabled():
        return conv(pooled)
    torch._C._set_mkldnn_enabled(False)
    try:
        return conv(pooled.contiguous())
    finally:
        torch._C._set_mkldnn_enabled(True)
