"""Fast, memory-lean building blocks for the attention modules' `impl="fast"` paths.

Each autograd function saves only its input `x` (shared by all of them, so stored once) and
small gate tensors, and recomputes what it needs in backward:

- `gate_product(x, gc, gs, identity)`: `x * gc * gs`, or `relu(x * gc * gs + identity)`.
- `gated_channel_pool(x, gc)`: `[mean over C; max over C]` of `x * gc`, `(B, 2, H, W)`.
- `avg_max_pool(x)`: global average and max pooling `(2, B, C)`, one-pass-style backward.
- `channel_pool(t)`: `[mean over C; max over C]` without autograd.
- `hw_mean(x)`: average pooling as a sum, whose backward writes one full-size gradient.
- layout-aware helpers: `outer_gate`, `mul_gates`, `mul_spatial`, `add_channel_`,
  `add_spatial_`, `hw_max`, `c_max`, `sum_hw_weighted`, `sum_c_weighted`.

Everything keeps the input's dtype (bf16 stays bf16: the full-size maps are never upcast;
pooled vectors and gates are small) and its layout (contiguous or channels_last). On CPU,
several eager PyTorch kernels are slow for channels_last maps with few channels, most of
all in bf16 (measured, torch 2.14, one core, a (128, 16, 32, 32) map): `amax` over (2, 3)
takes 30-90x a copy, `amax` over C 10-25x, a product with a `(B, 1, H, W)` gate 25-50x.
The helpers below route those through kernels that are fast for that layout (max pooling,
batched matrix products, pairwise maxima) and fall back to the plain ops elsewhere.

Shapes: `x (B, C, H, W)`, `gc (B, C, 1, 1)`, `gs (B, 1, H, W)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def is_channels_last(t: torch.Tensor) -> bool:
    """True if `t (B, C, H, W)` is stored channels_last (and not also contiguous)."""
    return (t.dim() == 4 and not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last))


def _layout(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def _rows(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A 3-D view of `t (B, C, H, W)`, copying only if `t` is in neither layout:
    `(B, H*W, C)` if `t` is channels_last, else `(B, C, H*W)`; the flag says which."""
    b, c, h, w = t.shape
    if is_channels_last(t):
        return t.permute(0, 2, 3, 1).reshape(b, h * w, c), True
    return t.reshape(b, c, h * w), False


def _from_rows(rows: torch.Tensor, last: bool, shape: torch.Size) -> torch.Tensor:
    """Inverse of `_rows`: the `(B, C, H, W)` view of a `(B, H*W, C)` / `(B, C, H*W)` tensor."""
    b, c, h, w = shape
    if last:
        return rows.reshape(b, h, w, c).permute(0, 3, 1, 2)
    return rows.reshape(b, c, h, w)


def _low(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _cpu_cl(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and is_channels_last(t)


def _narrow_low(t: torch.Tensor) -> bool:
    """CPU channels_last maps in low precision with under 32 channels: there an eager
    product, sum or comparison with a `(B, 1, H, W)` operand, or an add of a `(B, C, 1, 1)`
    one, runs 5-20x slower than a batched outer product that writes the operand out."""
    return _cpu_cl(t) and _low(t) and t.shape[1] < 32


def outer_gate(gc: torch.Tensor | None, gs: torch.Tensor | None,
               like: torch.Tensor) -> torch.Tensor:
    """The full gate `gc * gs` `(B, C, H, W)` in `like`'s dtype and layout, written in one
    pass (a batched outer product); a missing gate counts as ones."""
    b, c, h, w = like.shape
    dt = like.dtype
    col = (gs.reshape(b, h * w, 1).to(dt) if gs is not None
           else like.new_ones(1, 1, 1).expand(b, h * w, 1))
    row = (gc.reshape(b, 1, c).to(dt) if gc is not None
           else like.new_ones(1, 1, 1).expand(b, 1, c))
    if is_channels_last(like):
        return _from_rows(torch.bmm(col, row), True, like.shape)
    return _from_rows(torch.bmm(row.transpose(1, 2), col.transpose(1, 2)), False, like.shape)


def mul_gates(t: torch.Tensor, gc: torch.Tensor | None, gs: torch.Tensor | None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """`t * gc * gs` (a missing gate counts as ones) in `t`'s dtype and layout, into `out`
    when given (which may be `t`)."""
    if _narrow_low(t) and gs is not None:
        gate = outer_gate(gc, gs, t)
        return torch.mul(t, gate, out=out) if out is not None else t * gate
    first = gc if gc is not None else gs
    res = torch.mul(t, first.to(t.dtype), out=out) if out is not None else t * first.to(t.dtype)
    if gc is not None and gs is not None:
        res.mul_(gs.to(t.dtype))
    return res


def mul_spatial(t: torch.Tensor, gs: torch.Tensor, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """`t * gs` for `t (B, C, H, W)`, `gs (B, 1, H, W)`, in `t`'s dtype and layout (into
    `out` when given, which may be `t`)."""
    return mul_gates(t, None, gs, out)


def add_channel_(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`t += v` in place for `t (B, C, H, W)`, `v (B, C, 1, 1)`: on CPU in low precision as a
    batched product with ones (an eager bf16 add of a broadcast operand is 2-20x slower)."""
    if t.device.type != "cpu" or not _low(t):
        return t.add_(v.to(t.dtype))
    rows, last = _rows(t)
    b, c, h, w = t.shape
    ones = t.new_ones(1, 1, 1)
    col = v.reshape(b, c, 1).to(t.dtype)
    if last:
        rows.baddbmm_(ones.expand(b, h * w, 1), col.transpose(1, 2))
    else:
        rows.baddbmm_(col, ones.expand(b, 1, h * w))
    return t


def add_spatial_(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`t += v` in place for `t (B, C, H, W)`, `v (B, 1, H, W)` (see `_narrow_low`)."""
    if not _narrow_low(t):
        return t.add_(v.to(t.dtype))
    rows, _ = _rows(t)
    b, c, h, w = t.shape
    rows.baddbmm_(v.reshape(b, h * w, 1).to(t.dtype), t.new_ones(1, 1, 1).expand(b, 1, c))
    return t


def _hw_mean(x: torch.Tensor) -> torch.Tensor:
    return x.sum((2, 3)) / (x.shape[2] * x.shape[3])


class _HwMean(torch.autograd.Function):
    """Mean over H, W, `(B, C, H, W) -> (B, C)`, whose backward writes a full-size gradient
    in `x`'s layout in one pass (autograd's broadcast would be added on slowly in bf16)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        ctx.like = (x.shape, x.dtype, _layout(x))
        return _hw_mean(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        shape, dtype, layout = ctx.like
        grad = (grad / (shape[2] * shape[3])).to(dtype)[:, :, None, None]
        if grad.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
            return grad.expand(shape)
        like = torch.empty(shape, dtype=dtype, device=grad.device, memory_format=layout)
        return outer_gate(grad, None, like)


def hw_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over H, W: `(B, C, H, W) -> (B, C)` (sum then divide: `mean` itself is several
    times slower on bf16 channels_last maps)."""
    if torch.is_grad_enabled() and x.requires_grad and use_fast_path():
        return _HwMean.apply(x)
    return _hw_mean(x)


def hw_max(x: torch.Tensor) -> torch.Tensor:
    """Max over H, W: `(B, C, H, W) -> (B, C)`."""
    if x.device.type == "cpu" and is_channels_last(x):  # amax is 5-90x slower there
        return F.max_pool2d(x, x.shape[2:]).flatten(1)
    return x.amax((2, 3))


def c_max(t: torch.Tensor) -> torch.Tensor:
    """Max over C: `(B, C, H, W) -> (B, 1, H, W)` (contiguous)."""
    if not (_cpu_cl(t) and t.shape[1] < (64 if _low(t) else 32)):
        return t.amax(1, keepdim=True).contiguous()
    # amax over a short innermost dimension is 2-10x slower than halving the channels
    rows, _ = _rows(t)  # (B, H*W, C)
    while rows.shape[2] > 1:
        half = rows.shape[2] // 2
        top = torch.maximum(rows[:, :, :half], rows[:, :, half:2 * half])
        if rows.shape[2] % 2:
            top[:, :, :1] = torch.maximum(top[:, :, :1], rows[:, :, 2 * half:])
        rows = top
    b, _, h, w = t.shape
    return rows.reshape(b, 1, h, w)


def sum_hw_weighted(t: torch.Tensor, w_hw: torch.Tensor) -> torch.Tensor:
    """`(t * w_hw).sum((2, 3), keepdim=True)` as one batched matrix product, no temporary:
    `t (B, C, H, W)`, `w_hw (B, 1, H, W)` -> `(B, C, 1, 1)`."""
    b, c = t.shape[:2]
    rows, last = _rows(t)
    weights = w_hw.reshape(b, -1, 1).to(t.dtype)
    out = (weights.transpose(1, 2) @ rows) if last else (rows @ weights)
    return out.reshape(b, c, 1, 1)


def sum_c_weighted(t: torch.Tensor, w_c: torch.Tensor | None = None) -> torch.Tensor:
    """`(t * w_c).sum(1, keepdim=True)` (`w_c` None: ones): `t (B, C, H, W)`,
    `w_c (B, C, 1, 1)` -> `(B, 1, H, W)`; in low precision on CPU as one batched matrix
    product without a temporary (2-3x faster there, 2-4x slower in fp32)."""
    b, c, h, w = t.shape
    if not (t.device.type == "cpu" and _low(t) and c < 64):
        return (t if w_c is None else t * w_c.to(t.dtype)).sum(1, keepdim=True)
    rows, last = _rows(t)
    weights = (t.new_ones(1, 1, 1).expand(b, c, 1) if w_c is None
               else w_c.reshape(b, c, 1).to(t.dtype))
    out = (rows @ weights) if last else (weights.transpose(1, 2) @ rows)
    return out.reshape(b, 1, h, w)


class _GateProduct(torch.autograd.Function):
    """`x * gc * gs` (either gate may be None), plus `identity` then ReLU when given.
    Saves `x`, the gates and (with a residual) the output, never `x * gc`."""

    @staticmethod
    def forward(ctx, x, gc, gs, identity):  # type: ignore[override]
        out = mul_gates(x, gc, gs)
        if identity is not None:
            out.add_(identity).relu_()
        ctx.has = (gc is not None, gs is not None, identity is not None)
        ctx.save_for_backward(x, gc, gs, out if identity is not None else None)
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, gc, gs, out = ctx.saved_tensors
        grad = grad.to(x.dtype).contiguous(memory_format=_layout(x))
        if out is not None:  # through the ReLU: zero where the output was clamped
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        grad_x = grad_gc = grad_gs = None
        if ctx.needs_input_grad[0]:
            grad_x = mul_gates(grad, gc, gs)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gx = grad * x
            if ctx.needs_input_grad[1]:  # d/dgc = sum over H, W of grad * x * gs
                grad_gc = (sum_hw_weighted(gx, gs) if gs is not None
                           else gx.sum((2, 3), keepdim=True)).to(gc.dtype)
            if ctx.needs_input_grad[2]:  # d/dgs = sum over C of grad * x * gc
                grad_gs = sum_c_weighted(gx, gc).to(gs.dtype)
        grad_identity = grad if ctx.has[2] and ctx.needs_input_grad[3] else None
        return grad_x, grad_gc, grad_gs, grad_identity


def gate_product(x: torch.Tensor, gc: torch.Tensor | None, gs: torch.Tensor | None,
                 identity: torch.Tensor | None = None) -> torch.Tensor:
    """`x * gc * gs` `(B, C, H, W)`; with `identity` `(B, C, H, W)`:
    `relu(x * gc * gs + identity)`. `gc (B, C, 1, 1)` or None, `gs (B, 1, H, W)` or None.

    The result has `x`'s dtype and layout. Under autograd only `x`, the gates and (with
    `identity`) the output are kept for backward; without autograd the product is computed
    with one new tensor, updated in place.
    """
    if gc is None and gs is None:
        raise ValueError("gate_product needs at least one of gc, gs")
    if not use_fast_path():
        out = x * gc if gc is not None else x * gs
        if gc is not None and gs is not None:
            out = out * gs
        return out if identity is None else torch.relu(out + identity)
    if torch.is_grad_enabled():
        return _GateProduct.apply(x, gc, gs, identity)
    out = mul_gates(x, gc, gs)
    return out if identity is None else out.add_(identity).relu_()


def _pooled_buffer(x: torch.Tensor) -> torch.Tensor:
    """An empty `(B, 2, H, W)` tensor stored as `(H, W, B, 2)`: the layout in which CBAM's
    spatial convolution (`cbam.spatial_conv`) reads it without a copy."""
    b, _, h, w = x.shape
    return x.new_empty(h, w, b, 2).permute(2, 3, 0, 1)


def _channel_max_grad_(y: torch.Tensor, maxima: torch.Tensor, grad_max: torch.Tensor
                       ) -> torch.Tensor:
    """The gradient w.r.t. `y (B, C, H, W)` of `maxima = max over C of y` `(B, 1, H, W)`,
    written into `y` (which is overwritten): shared equally among tied maxima, as `amax`
    does. The mask is made as floats: summing a bool mask costs a full-size cast copy."""
    target = outer_gate(None, maxima, y) if _narrow_low(y) else maxima.to(y.dtype)
    mask = torch.eq(y, target, out=y)
    return mul_spatial(mask, grad_max / sum_c_weighted(mask), out=mask)


class _GatedChannelPool(torch.autograd.Function):
    """`[mean_C(x * gc); max_C(x * gc)]`, keeping `x`, `gc` and the max for backward."""

    @staticmethod
    def forward(ctx, x, gc):  # type: ignore[override]
        gc_x = gc.to(x.dtype)
        gated = x * gc_x
        maxima = c_max(gated)
        pooled = _pooled_buffer(x)
        mean = sum_c_weighted(x, gc_x) if _cpu_cl(x) and _low(x) else gated.sum(1, keepdim=True)
        pooled[:, :1] = mean.div_(x.shape[1])
        pooled[:, 1:] = maxima
        ctx.save_for_backward(x, gc, maxima)
        return pooled

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, gc, maxima = ctx.saved_tensors
        gc_x = gc.to(x.dtype)
        grad = grad.to(x.dtype)
        # weight (B, C, H, W): the gradient w.r.t. x * gc of both pooled outputs
        weight = _channel_max_grad_(x * gc_x, maxima, grad[:, 1:])
        add_spatial_(weight, grad[:, :1] / x.shape[1])
        grad_gc = None
        if ctx.needs_input_grad[1]:
            grad_gc = (weight * x).sum((2, 3), keepdim=True).to(gc.dtype)
        grad_x = weight.mul_(gc_x) if ctx.needs_input_grad[0] else None
        return grad_x, grad_gc


class _AvgMaxPool(torch.autograd.Function):
    """`[mean over H, W; max over H, W]` of `x`, `(B, C, H, W) -> (2, B, C)`, with a backward
    that writes the input gradient with one new tensor (autograd's mean + amax backward
    make several full-size temporaries and copies)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        maxima = hw_max(x)
        ctx.save_for_backward(x, maxima)
        return torch.stack([_hw_mean(x), maxima])

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, maxima = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_avg = (grad[0] / (x.shape[2] * x.shape[3]))[:, :, None, None]
        # as amax does: tied maxima share the gradient equally (float mask: see above)
        mask = torch.eq(x, maxima[:, :, None, None], out=torch.empty_like(x))
        mask.mul_(grad[1][:, :, None, None] / mask.sum((2, 3), keepdim=True))
        return add_channel_(mask, grad_avg)


def avg_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Global average and max pooling, `(B, C, H, W) -> (2, B, C)` ([avg; max])."""
    if not use_fast_path():
        return torch.stack([x.mean((2, 3)), x.amax((2, 3))])
    if torch.is_grad_enabled():
        return _AvgMaxPool.apply(x)
    return torch.stack([hw_mean(x), hw_max(x)])


def gated_channel_pool(x: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """Mean and max over channels of `x * gc`: `(B, C, H, W), (B, C, 1, 1) -> (B, 2, H, W)`,
    in that order ([mean; max], as CBAM's spatial gate takes them)."""
    if not use_fast_path():
        gated = x * gc
        return torch.cat([gated.mean(1, keepdim=True), gated.amax(1, keepdim=True)], dim=1)
    if torch.is_grad_enabled():
        return _GatedChannelPool.apply(x, gc)
    return channel_pool(x * gc.to(x.dtype))


def channel_pool(t: torch.Tensor) -> torch.Tensor:
    """`[mean over C; max over C]` of `t`, `(B, C, H, W) -> (B, 2, H, W)`, without autograd.
    With few channels on CPU channels_last (where `mean` / `amax` over C are slow) it is
    stored as `cbam.spatial_conv` reads it; otherwise with the two plain reductions."""
    c = t.shape[1]
    if not (_cpu_cl(t) and c < (64 if _low(t) else 32)):  # bf16 `mean` is 5-20x a `sum`
        return torch.cat([t.sum(1, keepdim=True).div_(c), t.amax(1, keepdim=True)], dim=1)
    pooled = _pooled_buffer(t)
    pooled[:, :1] = sum_c_weighted(t).div_(c)
    pooled[:, 1:] = c_max(t)
    return pooled
