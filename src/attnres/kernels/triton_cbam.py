"""CBAM in about four passes over the feature map, with Triton kernels.

The eager module reads or writes the full (B, C, H, W) tensor about eight times (two global
pools, the channel product, the channel-wise mean and max, the spatial product) and autograd
keeps the channel-gated tensor for backward. Here:

    pass 1  x               -> per-channel sum, max and tie count        (B, C)
            tiny MLP (torch) -> channel gate gc                           (B, C)
    pass 2  x, gc           -> per-pixel mean, max, tie count of x * gc   (B, H*W)
            7x7 conv (torch) -> spatial gate gs                           (B, H*W)
    pass 3  x, gc, gs       -> y = x * gc * gs
    (+ optional residual r: y = relu(x * gc * gs + r), written once)

Backward saves only x and the small vectors, and recomputes x * gc on the fly. The maximum's
gradient is split evenly between tied values, as `torch.amax` does, so gradients match the
reference module. Layouts: any strides (contiguous and channels_last); dtypes fp32, fp16,
bf16 with fp32 accumulation. With TRITON_INTERPRET=1 the kernels run on the CPU (slowly),
which the tests use where there is no GPU.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - Triton is optional
    triton = None

BLOCK_C = 32
BLOCK_HW = 64


def available() -> bool:
    """True when Triton is importable (kernels then run on CUDA tensors, or anywhere under
    TRITON_INTERPRET=1)."""
    return triton is not None


def can_run(x: torch.Tensor) -> bool:
    """True when the kernels can take `x`: Triton is installed and `x` is on CUDA (or the
    interpreter is on, TRITON_INTERPRET=1)."""
    return available() and (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _offsets(b, c, hw, W, s_b, s_c, s_h, s_w):
        return b * s_b + c[:, None] * s_c + (hw // W)[None, :] * s_h + (hw % W)[None, :] * s_w

    @triton.jit
    def _channel_stats_kernel(x_ptr, sum_ptr, max_ptr, cnt_ptr, C, HW, W,
                              s_b, s_c, s_h, s_w,
                              BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        """Per (b, c): sum, max and count of the max over H*W."""
        b = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        total = tl.zeros([BLOCK_C], tl.float32)
        best = tl.full([BLOCK_C], float("-inf"), tl.float32)
        count = tl.zeros([BLOCK_C], tl.float32)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            m = cmask[:, None] & (hw < HW)[None, :]
            v = tl.load(x_ptr + _offsets(b, c, hw, W, s_b, s_c, s_h, s_w), mask=m,
                        other=float("-inf")).to(tl.float32)
            total += tl.sum(tl.where(m, v, 0.0), axis=1)
            tile_max = tl.max(v, axis=1)
            tile_cnt = tl.sum(tl.where(m & (v == tile_max[:, None]), 1.0, 0.0), axis=1)
            count = tl.where(tile_max > best, tile_cnt,
                             tl.where(tile_max == best, count + tile_cnt, count))
            best = tl.maximum(best, tile_max)
        out = b * C + c
        tl.store(sum_ptr + out, total, mask=cmask)
        tl.store(max_ptr + out, best, mask=cmask)
        tl.store(cnt_ptr + out, count, mask=cmask)

    @triton.jit
    def _gated_pixel_stats_kernel(x_ptr, gc_ptr, sum_ptr, max_ptr, cnt_ptr, C, HW, W,
                                  s_b, s_c, s_h, s_w,
                                  BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        """Per (b, pixel): sum, max and count of the max over C of x * gc."""
        b = tl.program_id(0)
        hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        total = tl.zeros([BLOCK_HW], tl.float32)
        best = tl.full([BLOCK_HW], float("-inf"), tl.float32)
        count = tl.zeros([BLOCK_HW], tl.float32)
        for start in range(0, C, BLOCK_C):
            c = start + tl.arange(0, BLOCK_C)
            m = (c < C)[:, None] & hmask[None, :]
            x = tl.load(x_ptr + _offsets(b, c, hw, W, s_b, s_c, s_h, s_w), mask=m,
                        other=0.0).to(tl.float32)
            g = tl.load(gc_ptr + b * C + c, mask=c < C, other=0.0)
            v = tl.where(m, x * g[:, None], float("-inf"))
            total += tl.sum(tl.where(m, v, 0.0), axis=0)
            tile_max = tl.max(v, axis=0)
            tile_cnt = tl.sum(tl.where(m & (v == tile_max[None, :]), 1.0, 0.0), axis=0)
            count = tl.where(tile_max > best, tile_cnt,
                             tl.where(tile_max == best, count + tile_cnt, count))
            best = tl.maximum(best, tile_max)
        out = b * HW + hw
        tl.store(sum_ptr + out, total, mask=hmask)
        tl.store(max_ptr + out, best, mask=hmask)
        tl.store(cnt_ptr + out, count, mask=hmask)

    @triton.jit
    def _apply_kernel(x_ptr, gc_ptr, gs_ptr, r_ptr, y_ptr, C, HW, W,
                      s_b, s_c, s_h, s_w, r_b, r_c, r_h, r_w, y_b, y_c, y_h, y_w,
                      HAS_RESIDUAL: tl.constexpr,
                      BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        """y = x * gc * gs, or relu(x * gc * gs + r)."""
        b = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        hw = tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        m = (c < C)[:, None] & (hw < HW)[None, :]
        x = tl.load(x_ptr + _offsets(b, c, hw, W, s_b, s_c, s_h, s_w), mask=m,
                    other=0.0).to(tl.float32)
        gc = tl.load(gc_ptr + b * C + c, mask=c < C, other=0.0)
        gs = tl.load(gs_ptr + b * HW + hw, mask=hw < HW, other=0.0)
        y = x * gc[:, None] * gs[None, :]
        if HAS_RESIDUAL:
            r = tl.load(r_ptr + _offsets(b, c, hw, W, r_b, r_c, r_h, r_w), mask=m,
                        other=0.0).to(tl.float32)
            y = tl.maximum(y + r, 0.0)
        tl.store(y_ptr + _offsets(b, c, hw, W, y_b, y_c, y_h, y_w), y, mask=m)

    @triton.jit
    def _backward_pixel_kernel(g_ptr, x_ptr, gc_ptr, gs_ptr, dx_ptr, dgs_ptr, C, HW, W,
                               g_b, g_c, g_h, g_w, s_b, s_c, s_h, s_w,
                               d_b, d_c, d_h, d_w,
                               BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        """Per (b, pixel block), looping over C: dx = g * gc * gs and
        dgs = sum over C of g * x * gc."""
        b = tl.program_id(0)
        hw = tl.program_id(1) * BLOCK_HW + tl.arange(0, BLOCK_HW)
        hmask = hw < HW
        gs = tl.load(gs_ptr + b * HW + hw, mask=hmask, other=0.0)
        acc = tl.zeros([BLOCK_HW], tl.float32)
        for start in range(0, C, BLOCK_C):
            c = start + tl.arange(0, BLOCK_C)
            m = (c < C)[:, None] & hmask[None, :]
            g = tl.load(g_ptr + _offsets(b, c, hw, W, g_b, g_c, g_h, g_w), mask=m,
                        other=0.0).to(tl.float32)
            x = tl.load(x_ptr + _offsets(b, c, hw, W, s_b, s_c, s_h, s_w), mask=m,
                        other=0.0).to(tl.float32)
            gc = tl.load(gc_ptr + b * C + c, mask=c < C, other=0.0)
            acc += tl.sum(g * x * gc[:, None], axis=0)
            tl.store(dx_ptr + _offsets(b, c, hw, W, d_b, d_c, d_h, d_w),
                     g * gc[:, None] * gs[None, :], mask=m)
        tl.store(dgs_ptr + b * HW + hw, acc, mask=hmask)

    @triton.jit
    def _backward_channel_kernel(g_ptr, x_ptr, gc_ptr, gs_ptr, pmean_ptr, pmax_ptr,
                                 pbest_ptr, pcnt_ptr, cmean_ptr, cmax_ptr, cbest_ptr,
                                 ccnt_ptr, dx_ptr, dgc_ptr, C, HW, W,
                                 g_b, g_c, g_h, g_w, s_b, s_c, s_h, s_w,
                                 d_b, d_c, d_h, d_w, WRITE_DX: tl.constexpr,
                                 BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr):
        """Per (b, channel block), looping over H*W; adds into dx the gradients that flow
        through the two pooling steps, and writes dgc (product + pixel pooling terms).

        pmean/pmax: upstream grads of the per-pixel mean / max of x*gc, (B, HW);
        pbest/pcnt: that max and its tie count; cmean/cmax: upstream grads of the
        per-channel mean / max of x, (B, C); cbest/ccnt: that max and its tie count."""
        b = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = c < C
        gc = tl.load(gc_ptr + b * C + c, mask=cmask, other=0.0)
        g_cmean = tl.load(cmean_ptr + b * C + c, mask=cmask, other=0.0) / HW
        g_cmax = tl.load(cmax_ptr + b * C + c, mask=cmask, other=0.0)
        c_best = tl.load(cbest_ptr + b * C + c, mask=cmask, other=0.0)
        c_cnt = tl.load(ccnt_ptr + b * C + c, mask=cmask, other=1.0)
        acc = tl.zeros([BLOCK_C], tl.float32)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hmask = hw < HW
            m = cmask[:, None] & hmask[None, :]
            g = tl.load(g_ptr + _offsets(b, c, hw, W, g_b, g_c, g_h, g_w), mask=m,
                        other=0.0).to(tl.float32)
            x = tl.load(x_ptr + _offsets(b, c, hw, W, s_b, s_c, s_h, s_w), mask=m,
                        other=0.0).to(tl.float32)
            gs = tl.load(gs_ptr + b * HW + hw, mask=hmask, other=0.0)
            p_mean = tl.load(pmean_ptr + b * HW + hw, mask=hmask, other=0.0) / C
            p_max = tl.load(pmax_ptr + b * HW + hw, mask=hmask, other=0.0)
            p_best = tl.load(pbest_ptr + b * HW + hw, mask=hmask, other=0.0)
            p_cnt = tl.load(pcnt_ptr + b * HW + hw, mask=hmask, other=1.0)
            v = x * gc[:, None]
            # d(v) from the per-pixel mean and max over C of v = x * gc
            dv = p_mean[None, :] + tl.where(v == p_best[None, :], p_max[None, :] / p_cnt[None, :],
                                            0.0)
            acc += tl.sum(tl.where(m, g * x * gs[None, :] + dv * x, 0.0), axis=1)
            if WRITE_DX:  # d(x) from the per-channel mean and max over H*W of x
                dx_c = g_cmean[:, None] + tl.where(x == c_best[:, None],
                                                   (g_cmax / c_cnt)[:, None], 0.0)
                off = _offsets(b, c, hw, W, d_b, d_c, d_h, d_w)
                prev = tl.load(dx_ptr + off, mask=m, other=0.0).to(tl.float32)
                tl.store(dx_ptr + off, prev + dv * gc[:, None] + dx_c, mask=m)
        tl.store(dgc_ptr + b * C + c, acc, mask=cmask)


def _grid_c(B: int, C: int) -> tuple[int, int]:
    return (B, triton.cdiv(C, BLOCK_C))


def _grid_hw(B: int, HW: int) -> tuple[int, int]:
    return (B, triton.cdiv(HW, BLOCK_HW))


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel (sum, max, tie count) over H*W, each `(B, C)` fp32."""
    B, C, H, W = x.shape
    out = [torch.empty(B, C, device=x.device, dtype=torch.float32) for _ in range(3)]
    _channel_stats_kernel[_grid_c(B, C)](x, *out, C, H * W, W, *x.stride(),
                                         BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
    return tuple(out)


def gated_pixel_stats(x: torch.Tensor, gc: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-pixel (sum, max, tie count) over C of x * gc, each `(B, H*W)` fp32."""
    B, C, H, W = x.shape
    out = [torch.empty(B, H * W, device=x.device, dtype=torch.float32) for _ in range(3)]
    _gated_pixel_stats_kernel[_grid_hw(B, H * W)](x, gc, *out, C, H * W, W, *x.stride(),
                                                  BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
    return tuple(out)


def apply_gates(x: torch.Tensor, gc: torch.Tensor, gs: torch.Tensor,
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """`x * gc * gs` (or `relu(x * gc * gs + residual)`) in x's layout and dtype."""
    B, C, H, W = x.shape
    y = torch.empty_like(x)
    r = residual if residual is not None else x
    grid = (B, triton.cdiv(C, BLOCK_C), triton.cdiv(H * W, BLOCK_HW))
    _apply_kernel[grid](x, gc, gs, r, y, C, H * W, W, *x.stride(), *r.stride(), *y.stride(),
                        HAS_RESIDUAL=residual is not None, BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
    return y


class _FusedCBAM(torch.autograd.Function):
    """y = x * Mc(x) * Ms(x * Mc(x)) with the pooling and products in Triton kernels.

    The gates' small layers (MLP, 7x7 conv, norm) run as ordinary torch ops inside
    `forward`/`backward`, differentiated by autograd on the small tensors only."""

    @staticmethod
    def forward(ctx, x, residual, mlp, spatial, *params):
        B, C, H, W = x.shape
        with torch.enable_grad():
            c_sum, c_max, c_cnt = channel_stats(x)
            c_avg = (c_sum / (H * W)).requires_grad_()
            c_best = c_max.clone().requires_grad_()
            gc = mlp(c_avg, c_best)  # (B, C) fp32
        p_sum, p_max, p_cnt = gated_pixel_stats(x, gc.detach())
        with torch.enable_grad():
            p_mean = (p_sum / C).view(B, 1, H, W).requires_grad_()
            p_best = p_max.view(B, 1, H, W).clone().requires_grad_()
            gs = spatial(p_mean, p_best).reshape(B, H * W)
        gc_d, gs_d = gc.detach(), gs.detach()
        y = apply_gates(x, gc_d, gs_d, residual)
        ctx.save_for_backward(x, residual, y if residual is not None else None, gc_d, gs_d,
                              c_max, c_cnt, p_max, p_cnt)
        ctx.graph = (c_avg, c_best, gc, p_mean, p_best, gs)
        ctx.params = params
        return y

    @staticmethod
    def backward(ctx, g):
        x, residual, y, gc, gs, c_max, c_cnt, p_max, p_cnt = ctx.saved_tensors
        c_avg, c_best, gc_graph, p_mean, p_best, gs_graph = ctx.graph
        B, C, H, W = x.shape
        d_residual = None
        if residual is not None:  # through relu(x*gc*gs + r)
            g = torch.where(y > 0, g, torch.zeros_like(g))
            d_residual = g
        dx = torch.empty_like(x)
        d_gs = torch.empty(B, H * W, device=x.device, dtype=torch.float32)
        _backward_pixel_kernel[_grid_hw(B, H * W)](
            g, x, gc, gs, dx, d_gs, C, H * W, W, *g.stride(), *x.stride(), *dx.stride(),
            BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
        # spatial gate's small graph: d_gs -> grads of the pixel mean / max and its params
        d_pmean, d_pmax, *d_sp = torch.autograd.grad(
            gs_graph, (p_mean, p_best, *ctx.params), d_gs.view_as(gs_graph),
            allow_unused=True)
        d_pmean = d_pmean.reshape(B, H * W).contiguous()
        d_pmax = d_pmax.reshape(B, H * W).contiguous()
        # d_gc is a reduction over H*W, and the channel pools' grads (which dx needs)
        # come from d_gc through the MLP: one pass for d_gc, the MLP, one pass for dx.
        d_gc = torch.empty(B, C, device=x.device, dtype=torch.float32)
        _backward_channel_kernel[_grid_c(B, C)](
            g, x, gc, gs, d_pmean, d_pmax, p_max, p_cnt, c_max, c_max, c_max, c_cnt,
            dx, d_gc, C, H * W, W, *g.stride(), *x.stride(), *dx.stride(), WRITE_DX=False,
            BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
        d_cavg, d_cmax, *d_mlp = torch.autograd.grad(
            gc_graph, (c_avg, c_best, *ctx.params), d_gc, allow_unused=True)
        # final pass writes dx = product term + pixel-pool term + channel-pool term
        _backward_channel_kernel[_grid_c(B, C)](
            g, x, gc, gs, d_pmean, d_pmax, p_max, p_cnt, d_cavg.contiguous(),
            d_cmax.contiguous(), c_max, c_cnt, dx, d_gc, C, H * W, W, *g.stride(),
            *x.stride(), *dx.stride(), WRITE_DX=True, BLOCK_C=BLOCK_C, BLOCK_HW=BLOCK_HW)
        d_params = [a if a is not None else b for a, b in zip(d_sp, d_mlp)]
        ctx.graph = ctx.params = None
        return (dx, d_residual, None, None, *d_params)


def fused_cbam(module: torch.nn.Module, x: torch.Tensor,
               residual: torch.Tensor | None = None) -> torch.Tensor:
    """`module(x)` for a channel-first CBAM with avg+max pooling, or
    `relu(module(x) + residual)`, with the Triton kernels. `(B, C, H, W)` in, same out."""
    if not available():
        raise RuntimeError("Triton is not installed; use the reference CBAM")
    cg, sg = module.channel_gate, module.spatial_gate
    if cg is None or sg is None or module.order != "channel-first" or \
            tuple(cg.pool_types) != ("avg", "max"):
        raise ValueError("fused_cbam supports channel-first CBAM with pool_types=(avg, max)")

    def mlp(avg: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([avg, mx]).to(cg.fc1.weight.dtype)
        return torch.sigmoid(cg.fc2(cg.act(cg.fc1(stacked))).sum(0)).float()

    def spatial(mean: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([mean, mx], 1).to(sg.conv.weight.dtype)
        return torch.sigmoid(sg.norm(sg.conv(pooled))).float()

    params = [p for p in (*cg.parameters(), *sg.parameters())]
    return _FusedCBAM.apply(x, residual, mlp, spatial, *params)
