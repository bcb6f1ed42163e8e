"""CBAM: Convolutional Block Attention Module (Woo et al., ECCV 2018, arXiv:1807.06521).

    F'  = Mc(F) * F,   Mc(F) = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))      (eq. 2)
    F'' = Ms(F') * F', Ms(F) = sigmoid(conv7x7([AvgPool_c(F); MaxPool_c(F)]))   (eq. 3)

One MLP (C -> C/r -> C, ReLU) is shared by all pooled descriptors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .fused import (avg_max_pool, channel_pool, gate_product, gated_channel_pool, hw_mean,
                    is_channels_last, mul_spatial, use_fast_path)
from .norm import SafeBatchNorm2d
from .shapes import check_feature_map

POOL_TYPES = ("avg", "max", "lp", "lse")
ORDERS = ("channel-first", "spatial-first", "parallel")
IMPLS = ("fast", "reference")


def check_impl(impl: str, allowed: Sequence[str] = IMPLS) -> str:
    """`impl` if it is one of `allowed`, else a ValueError."""
    if impl not in allowed:
        raise ValueError(f"impl={impl!r}: allowed {', '.join(allowed)}")
    return impl


def hidden_width(channels: int, reduction: float) -> int:
    """Width of a reduction MLP: channels / reduction, never below 1."""
    return max(1, int(channels // reduction))


def spatial_pool(x: torch.Tensor, pool_type: str) -> torch.Tensor:
    """Global pooling over H, W: `(B, C, H, W) -> (B, C)`."""
    if pool_type == "avg":
        return x.mean(dim=(2, 3))
    if pool_type == "max":
        return x.amax(dim=(2, 3))
    if pool_type == "lp":  # power-2 LP pool over the whole map, as F.lp_pool2d computes it
        return x.pow(2).sum(dim=(2, 3)).sqrt()
    if pool_type == "lse":
        return torch.logsumexp(x.flatten(2), dim=2)
    raise ValueError(f"unknown pool type {pool_type!r}; allowed: {', '.join(POOL_TYPES)}")


class ChannelGate(nn.Module):
    """Channel attention weights `(B, C, H, W) -> (B, C, 1, 1)` in [0, 1]:
    sigmoid of the sum, over the pool types, of one shared MLP applied to each pooled vector.

    With `pool_types=("avg",)` and `mlp_bias=True` this is the Squeeze-and-Excitation gate.
    `impl="fast"` pools avg + max with a one-pass backward (`fused.avg_max_pool`) and
    takes averages as sums (`fused.hw_mean`: faster on bf16 channels_last maps).
    """

    def __init__(self, channels: int, reduction: float = 16,
                 pool_types: Sequence[str] = ("avg", "max"), mlp_bias: bool = False,
                 impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        pool_types = tuple(pool_types)
        bad = [p for p in pool_types if p not in POOL_TYPES]
        if bad or not pool_types:
            raise ValueError(f"pool_types={pool_types!r}: choose a non-empty subset of "
                             f"{', '.join(POOL_TYPES)}")
        if reduction <= 0:
            raise ValueError(f"reduction={reduction!r}: must be > 0")
        self.pool_types = pool_types
        hidden = hidden_width(channels, reduction)
        self.fc1 = nn.Linear(channels, hidden, bias=mlp_bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One MLP call on the stacked descriptors (P, B, C), then the sum over P.
        fast = self.impl == "fast" and use_fast_path()
        if fast and self.pool_types in (("avg", "max"), ("max", "avg")):
            pooled = avg_max_pool(x)  # [avg; max], one pass in backward
            if self.pool_types[0] == "max":
                pooled = pooled.flip(0)
        elif fast and self.pool_types == ("avg",):
            pooled = hw_mean(x)[None]
        elif len(self.pool_types) == 1:
            pooled = spatial_pool(x, self.pool_types[0])[None]
        else:
            pooled = torch.stack([spatial_pool(x, p) for p in self.pool_types])
        logits = self.fc2(self.act(self.fc1(pooled))).sum(dim=0)
        return torch.sigmoid(logits)[:, :, None, None]


class SpatialGate(nn.Module):
    """Spatial attention weights `(B, C, H, W) -> (B, 1, H, W)` in [0, 1]:
    sigmoid(conv_kxk([mean over C; max over C])), optionally with batch norm after the conv
    (`norm="batch"`, as in the authors' code, where the conv then has no bias).

    `forward(x, channel_gate=gc)` returns the gate of `x * gc` (`gc (B, C, 1, 1)`) without
    keeping `x * gc` for backward (CBAM's fast path); the output is the gate either way.
    """

    def __init__(self, kernel_size: int = 7, norm: str | None = None,
                 impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size={kernel_size!r}: must be odd (the paper uses 3 or 7)")
        if norm not in (None, "batch"):
            raise ValueError(f"spatial_norm={norm!r}: allowed None or 'batch'")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=norm is None)
        # momentum 0.01 as in the authors' BasicConv.
        self.norm = SafeBatchNorm2d(1, momentum=0.01) if norm == "batch" else nn.Identity()

    def forward(self, x: torch.Tensor, channel_gate: torch.Tensor | None = None) -> torch.Tensor:
        fast = self.impl == "fast" and use_fast_path()
        if fast:
            pooled = self._pool_fast(x, channel_gate)
            return torch.sigmoid(self.norm(spatial_conv(pooled, self.conv)))
        if channel_gate is not None:
            x = x * channel_gate
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.norm(self.conv(pooled)))

    @staticmethod
    def _pool_fast(x: torch.Tensor, channel_gate: torch.Tensor | None) -> torch.Tensor:
        if channel_gate is not None:
            return gated_channel_pool(x, channel_gate)
        if torch.is_grad_enabled():  # a gate of ones: the autograd function's backward
            return gated_channel_pool(x, x.new_ones(1, 1, 1, 1).expand(*x.shape[:2], 1, 1))
        return channel_pool(x)


class _PerSampleConv(torch.autograd.Function):
    """`conv2d(x, weight, bias)` for a thin convolution, `x (B, c, H, W)` -> `(B, 1, H, W)`,
    `weight (1, c, kh, kw)`, stride 1, "same" padding, any dilation: one depthwise
    convolution over the `(1, B*c, H, W)` channels_last view of `x` stored as `(H, W, B, c)`,
    then a sum over each sample's c channels.

    oneDNN handles one- and two-channel maps badly on CPU: measured on one core (torch 2.14,
    B = 128, 32 x 32), CBAM's 2 -> 1 convolution takes 9-20 ms forward + backward in bf16
    channels_last against about 1 ms for the three depthwise convolutions used here
    (forward; input gradient = forward with the flipped kernel; weight gradient = the input
    correlated with the output gradient as the kernel, at a stride of the dilation)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):  # type: ignore[override]
        b, c, h, w = x.shape
        dt = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            # (1, B*c, H, W) channels_last with the canonical strides (oneDNN copies others)
            q = x.to(dt).permute(2, 3, 0, 1).reshape(1, h, w, b * c).permute(0, 3, 1, 2)
            out = F.conv2d(q, _per_sample(weight, b, dt), padding=padding, dilation=dilation,
                           groups=b * c)
            parts = out.permute(0, 2, 3, 1).reshape(h, w, b, c)
            logits = x.new_empty(b, 1, h, w, dtype=dt)
            target = logits.view(b, h, w).permute(1, 2, 0)
            if c == 2:
                torch.add(parts[..., 0], parts[..., 1], out=target)
            else:
                torch.sum(parts, -1, out=target)
            if bias is not None:
                logits += bias.to(dt)
        ctx.conv = (padding, dilation)
        ctx.layout = (None if x.permute(2, 3, 0, 1).is_contiguous() else
                      torch.channels_last if is_channels_last(x) else torch.contiguous_format)
        ctx.save_for_backward(q, weight, bias)
        return logits

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        q, weight, bias = ctx.saved_tensors
        bc, h, w = q.shape[1:]
        c = weight.shape[1]
        b, (pad, dil) = bc // c, ctx.conv
        g = grad.to(q.dtype).reshape(b, 1, h, w)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            # the output gradient for each of a sample's c channels, (1, B*c, H, W) as q
            g2 = (g.reshape(b, h, w).permute(1, 2, 0).unsqueeze(-1).expand(h, w, b, c)
                  .reshape(1, h, w, bc).permute(0, 3, 1, 2))
            flipped = _per_sample(weight, b, q.dtype).flip(2, 3)
            gq = F.conv2d(g2, flipped, padding=pad, dilation=dil, groups=bc)
            grad_x = gq.permute(0, 2, 3, 1).reshape(h, w, b, c).permute(2, 3, 0, 1)
            if ctx.layout is not None:
                grad_x = grad_x.contiguous(memory_format=ctx.layout)
        if ctx.needs_input_grad[1]:
            kernels = g.expand(b, c, h, w).reshape(bc, 1, h, w)
            per_sample = F.conv2d(q, kernels, padding=pad, stride=dil, groups=bc)
            grad_weight = (per_sample.reshape(b, c, *weight.shape[2:])
                           .sum(0, keepdim=True, dtype=torch.float32).to(weight.dtype))
        if bias is not None and ctx.needs_input_grad[2]:
            grad_bias = g.sum(dtype=torch.float32).reshape(1).to(bias.dtype)
        return grad_x, grad_weight, grad_bias, None, None


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a convolution of `t` in (`t`'s own outside autocast)."""
    device = t.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return t.dtype


def _per_sample(weight: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """`weight (1, c, kh, kw)` as the `(B*c, 1, kh, kw)` kernel of the depthwise form."""
    kernel = weight.to(dtype).reshape(weight.shape[1], 1, *weight.shape[2:])
    return kernel if batch == 1 else kernel.repeat(batch, 1, 1, 1)


def thin_conv2d(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` `(B, Cin, H, W) -> (B, Cout, H, W)`, on CPU routed around oneDNN's slow
    kernels for thin maps: a 1 x 1 convolution of a channels_last map as a matrix product
    (`F.linear` over the channels), and a "same" convolution with one output channel and at
    most two input channels (CBAM's spatial gate, BAM's one-channel convolutions at 16
    channels) as one per-sample depthwise convolution (`_PerSampleConv`). Any other
    convolution, and any on another device, is `conv(x)`."""
    if x.device.type != "cpu" or not use_fast_path() or conv.groups != 1 \
            or conv.stride != (1, 1) or conv.padding_mode != "zeros" \
            or not isinstance(conv.padding, tuple):
        return conv(x)
    kh, kw = conv.kernel_size
    if (kh, kw) == (1, 1) and conv.padding == (0, 0) and (
            x.is_contiguous(memory_format=torch.channels_last) or x.shape[1] == 1):
        out = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
        return out.permute(0, 3, 1, 2)
    (dh, dw), (ph, pw) = conv.dilation, conv.padding
    b, _, h, w = x.shape
    same = kh % 2 == 1 and kw % 2 == 1 and (ph, pw) == (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    # Without autograd, small maps (ResNet-50 at batch 1) gain nothing from the depthwise
    # form and pay for its extra small ops.
    if not same or conv.out_channels != 1 or conv.in_channels > 2 or (
            not torch.is_grad_enabled() and b * h * w < 16384):
        return conv(x)
    return _PerSampleConv.apply(x, conv.weight, conv.bias, (ph, pw), (dh, dw))


def spatial_conv(pooled: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(pooled)` for CBAM's 2 -> 1 channel convolution, `(B, 2, H, W) -> (B, 1, H, W)`
    (see `thin_conv2d`)."""
    return thin_conv2d(pooled, conv)


class CBAM(nn.Module):
    """Channel then spatial attention, `(B, C, H, W) -> (B, C, H, W)`.

    Args:
        channels: C.
        reduction: MLP reduction ratio r (hidden width max(1, C // r)).
        pool_types: descriptors fed to the shared MLP, subset of avg, max, lp, lse.
        kernel_size: spatial gate kernel (3 or 7 in the paper).
        order: "channel-first" (paper), "spatial-first", or "parallel" (both gates computed
            from the input and applied together, x * Mc(x) * Ms(x)).
        channel, spatial: switch either gate off for channel-only / spatial-only ablations.
        mlp_bias: biases in the MLP (the paper's formulas have none; the authors' code has).
        spatial_norm: None or "batch" (the authors' code puts BN after the spatial conv).
        impl: "fast" (default; see `attention/fused.py`) or "reference" (the formulas as
            eager PyTorch ops); both give the same outputs and gradients and have the same
            parameters. "triton" (opt-in, channel-first with avg + max pooling) runs the
            fused kernels of `attnres.kernels.triton_cbam` on CUDA tensors and "fast"
            elsewhere.
    """

    def __init__(self, channels: int, reduction: float = 16,
                 pool_types: Sequence[str] = ("avg", "max"), kernel_size: int = 7,
                 order: str = "channel-first", channel: bool = True, spatial: bool = True,
                 mlp_bias: bool = False, spatial_norm: str | None = None,
                 impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl, (*IMPLS, "triton"))
        if order not in ORDERS:
            raise ValueError(f"order={order!r}: allowed {', '.join(ORDERS)}")
        if not (channel or spatial):
            raise ValueError("channel=False and spatial=False leaves CBAM with no gate")
        self.order, self.channels = order, channels
        gate_impl = "fast" if impl == "triton" else impl
        self.channel_gate = (ChannelGate(channels, reduction, pool_types, mlp_bias, gate_impl)
                             if channel else None)
        self.spatial_gate = SpatialGate(kernel_size, spatial_norm, gate_impl) if spatial else None
        if impl == "triton":
            from ..kernels import triton_cbam

            if not triton_cbam.available():
                raise ValueError("impl='triton' needs Triton (pip install triton); "
                                 "allowed without it: fast, reference")
            if not (channel and spatial and order == "channel-first"
                    and tuple(pool_types) == ("avg", "max")):
                raise ValueError("impl='triton' supports channel-first CBAM with both gates "
                                 "and pool_types=('avg', 'max'); use impl='fast'")

    # Residual blocks may call `attn(out, identity=identity)` to get relu(attn(out) + identity).
    folds_residual = True
    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, C, H, W) -> (B, C, H, W)`; with `identity` `(B, C, H, W)`, the attention
        folded into a residual block's add and ReLU: `relu(cbam(x) + identity)`, which saves
        a pass over the map."""
        check_feature_map(self, x, self.channels)
        if self.impl == "triton" and use_fast_path():
            from ..kernels import triton_cbam

            if triton_cbam.can_run(x):
                return triton_cbam.fused_cbam(self, x, identity)
        if self.impl != "reference" and use_fast_path():
            return self._forward_fast(x, identity)
        out = self._forward_reference(x)
        return out if identity is None else torch.relu(out + identity)

    def forward_add(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """`relu(self(x) + identity)`, through `__call__` so that hooks still run."""
        return self(x, identity=identity)

    def _forward_fast(self, x: torch.Tensor, identity: torch.Tensor | None) -> torch.Tensor:
        channel_gate, spatial_gate = self.channel_gate, self.spatial_gate
        if spatial_gate is None:
            return gate_product(x, channel_gate(x), None, identity)
        if channel_gate is None:
            return gate_product(x, None, spatial_gate(x), identity)
        if self.order == "parallel":
            return gate_product(x, channel_gate(x), spatial_gate(x), identity)
        if self.order == "spatial-first":  # an ablation; the eager ops are fine
            out = self._forward_reference(x)
            return out if identity is None else torch.relu(out + identity)
        gc = channel_gate(x)
        if torch.is_grad_enabled():
            return gate_product(x, gc, spatial_gate(x, channel_gate=gc), identity)
        # Inference: x * gc is made once and then updated in place.
        gated = x * gc.to(x.dtype)
        gated = mul_spatial(gated, spatial_gate(gated), out=gated)
        return gated if identity is None else gated.add_(identity).relu_()

    def _forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        if self.channel_gate is None:
            return x * self.spatial_gate(x)
        if self.spatial_gate is None:
            return x * self.channel_gate(x)
        if self.order == "parallel":
            return x * self.channel_gate(x) * self.spatial_gate(x)
        if self.order == "spatial-first":
            x = x * self.spatial_gate(x)
            return x * self.channel_gate(x)
        x = x * self.channel_gate(x)
        return x * self.spatial_gate(x)
