"""BAM: Bottleneck Attention Module (Park et al., BMVC 2018, arXiv:1807.06514).

    F' = F + F * M(F),   M(F) = sigmoid(Mc(F) + Ms(F))                       (eqs. 1-2)
    Mc(F) = BN(MLP(AvgPool(F)))                       -> (B, C, 1, 1)         (eq. 3)
    Ms(F) = BN(f1x1(f3x3(f3x3(f1x1(F)))))             -> (B, 1, H, W)         (eq. 4)

The paper sums the branches before the sigmoid (the authors' code multiplies them);
this follows the paper. The two 3x3 convs are dilated (d = 4), r = 16 in both branches.
"""

from __future__ import annotations

import torch
from torch import nn

from .cbam import check_impl, hidden_width, thin_conv2d
from .fused import add_channel_, hw_mean, outer_gate, sum_c_weighted, use_fast_path
from .norm import SafeBatchNorm2d
from .shapes import check_feature_map


def _conv_bn_relu(cin: int, cout: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel_size - 1) // 2
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size, padding=pad, dilation=dilation,
                                   bias=False),
                         SafeBatchNorm2d(cout), nn.ReLU(inplace=True))


def _gate_map(mc: torch.Tensor, ms: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`sigmoid(mc + ms)` `(B, C, H, W)` in `like`'s dtype and layout, written as one outer
    sum (no broadcast add, which is slow in bf16 on CPU) and a sigmoid in place."""
    return add_channel_(outer_gate(None, ms, like), mc).sigmoid_()


class _Factors:
    """M's two small factors, and M itself while one backward pass needs it twice."""

    def __init__(self, mc: torch.Tensor, ms: torch.Tensor) -> None:
        self.mc, self.ms = mc, ms
        self.gate: torch.Tensor | None = None


class _BamGateMap(torch.autograd.Function):
    """M = sigmoid(mc + ms) from `mc (B, C, 1, 1)` and `ms (B, 1, H, W)`, keeping only those
    two for backward (M is recomputed once per backward pass, shared with `_BamApply`)."""

    @staticmethod
    def forward(ctx, mc, ms, like, factors):  # type: ignore[override]
        ctx.save_for_backward(mc, ms, like)  # `like` (the input x) is kept by BAM anyway
        ctx.factors = factors
        return _gate_map(mc, ms, like)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        mc, ms, like = ctx.saved_tensors
        gate, ctx.factors.gate = ctx.factors.gate, None
        if gate is None:
            gate = _gate_map(mc, ms, like)
        grad = torch.ops.aten.sigmoid_backward(grad.to(gate.dtype), gate)
        return (grad.sum((2, 3), keepdim=True).to(mc.dtype),
                sum_c_weighted(grad).to(ms.dtype), None, None)


class _BamApply(torch.autograd.Function):
    """`x * (1 + M)` for the gate map M of `_BamGateMap`; saves `x` and M's two small
    factors (not M itself)."""

    @staticmethod
    def forward(ctx, x, gate, factors):  # type: ignore[override]
        ctx.save_for_backward(x, factors.mc, factors.ms)
        ctx.factors = factors
        return torch.addcmul(x, x, gate.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, mc, ms = ctx.saved_tensors
        gate = _gate_map(mc, ms, x)
        grad = grad.to(x.dtype)
        grad_x = torch.addcmul(grad, grad, gate) if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_gate = grad * x
            ctx.factors.gate = gate  # for _BamGateMap's backward, which runs next
        return grad_x, grad_gate, None


class BamGate(nn.Module):
    """BAM's attention map M(F) = sigmoid(Mc(F) + Ms(F)): `(B, C, H, W) -> (B, C, H, W)`.
    `impl="fast"` pools by sums and builds M without a broadcast add (`_gate_map`)."""

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4,
                 num_dilated: int = 2, impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        hidden = hidden_width(channels, reduction)
        self.channel_mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                         nn.Linear(hidden, channels))
        self.channel_norm = SafeBatchNorm2d(channels)
        layers = [_conv_bn_relu(channels, hidden, 1)]
        layers += [_conv_bn_relu(hidden, hidden, 3, dilation) for _ in range(num_dilated)]
        self.spatial = nn.Sequential(*layers)
        self.spatial_out = nn.Conv2d(hidden, 1, 1, bias=False)
        self.spatial_norm = SafeBatchNorm2d(1)

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Mc: `(B, C, H, W) -> (B, C, 1, 1)` (logits, before the sigmoid)."""
        pooled = hw_mean(x) if self.impl == "fast" and use_fast_path() else x.mean(dim=(2, 3))
        return self.channel_norm(self.channel_mlp(pooled)[:, :, None, None])

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Ms: `(B, C, H, W) -> (B, 1, H, W)` (logits, before the sigmoid)."""
        if self.impl != "fast" or not use_fast_path():
            return self.spatial_norm(self.spatial_out(self.spatial(x)))
        for conv, norm, act in self.spatial:  # the thin convolutions, see cbam.thin_conv2d
            x = act(norm(thin_conv2d(x, conv)))
        return self.spatial_norm(thin_conv2d(x, self.spatial_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mc, ms = self.channel_attention(x), self.spatial_attention(x)
        if self.impl != "fast" or not use_fast_path():
            return torch.sigmoid(mc + ms)
        if not torch.is_grad_enabled():
            return _gate_map(mc, ms, x)
        factors = _Factors(mc, ms)
        gate = _BamGateMap.apply(mc, ms, x, factors)
        gate._bam_factors = factors  # lets BAM recompute M in backward instead of saving it
        return gate


class BAM(nn.Module):
    """BAM block, `(B, C, H, W) -> (B, C, H, W)`: x * (1 + M(x)), reduction r = 16 and
    dilation 4 as in the paper. `impl`: "fast" or "reference", as for CBAM (same outputs,
    gradients and parameters)."""

    def __init__(self, channels: int, reduction: float = 16, dilation: int = 4,
                 num_dilated: int = 2, impl: str = "fast") -> None:
        super().__init__()
        self.impl = check_impl(impl)
        self.channels = channels
        self.gate = BamGate(channels, reduction, dilation, num_dilated, impl)

    module_path: str | None = None  # set by name_attention_modules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_feature_map(self, x, self.channels)
        gate = self.gate(x)
        if self.impl != "fast" or not use_fast_path():
            return x * (1 + gate)
        factors = getattr(gate, "_bam_factors", None)
        if factors is None or not torch.is_grad_enabled():  # no autograd, or a hook's map
            return torch.addcmul(x, x, gate.to(x.dtype))
        return _BamApply.apply(x, gate, factors)
