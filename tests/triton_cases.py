"""Fused Triton CBAM against the reference module, outputs and gradients.

On a CUDA machine the kernels run on the GPU; elsewhere Triton's interpreter
(TRITON_INTERPRET=1, set before Triton is imported) runs them on the CPU with NumPy.
Each test id says which mode ran.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton")

from attnres.attention import CBAM  # noqa: E402
from attnres.kernels import triton_cbam  # noqa: E402

MODE = "cuda" if HAS_CUDA else "interpreter"
DEVICE = "cuda" if HAS_CUDA else "cpu"
if not HAS_CUDA and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton was imported before this module could select the interpreter",
                allow_module_level=True)


def reference_and_fused(shape, channels_last, spatial_norm, residual, dtype=torch.float32):
    torch.manual_seed(0)
    c = shape[1]
    ref = CBAM(c, spatial_norm=spatial_norm, mlp_bias=spatial_norm is not None).to(DEVICE)
    if spatial_norm:
        ref.spatial_gate.norm.running_var.fill_(1.7)
    x = torch.randn(shape, device=DEVICE, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    r = torch.randn(shape, device=DEVICE, dtype=dtype) if residual else None
    g = torch.randn(shape, device=DEVICE, dtype=dtype)

    def run(fn):
        xi = x.clone().requires_grad_()
        ri = r.clone().requires_grad_() if r is not None else None
        ref.zero_grad()
        y = fn(xi, ri)
        (y.float() * g.float()).sum().backward()
        grads = [xi.grad] + ([ri.grad] if ri is not None else [])
        return y.detach(), grads, [p.grad.clone() for p in ref.parameters()]

    def eager(xi, ri):
        y = ref(xi)
        return torch.relu(y + ri) if ri is not None else y

    return run(eager), run(lambda xi, ri: triton_cbam.fused_cbam(ref, xi, ri))


@pytest.mark.parametrize("shape", [(2, 40, 9, 9), (1, 8, 1, 1), (1, 3, 5, 7)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("mode", [MODE])
def test_fused_matches_reference(shape, channels_last, mode) -> None:
    (y0, gx0, gp0), (y1, gx1, gp1) = reference_and_fused(shape, channels_last, None, False)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    if channels_last and shape[2] > 1:
        assert y1.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(gx1 + gp1, gx0 + gp0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [MODE])
def test_fused_with_norm_and_residual(mode) -> None:
    (y0, gx0, gp0), (y1, gx1, gp1) = reference_and_fused((2, 24, 6, 5), False, "batch", True)
    torch.testing.assert_close(y1, y0, rtol=1e-5, atol=1e-6)
    for a, b in zip(gx1 + gp1, gx0 + gp0):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", [MODE])
def test_ties_in_max_split_the_gradient_like_amax(mode) -> None:
    torch.manual_seed(1)
    ref = CBAM(16).to(DEVICE)
    x = torch.relu(torch.randn(2, 16, 4, 4, device=DEVICE)) * 0  # every value tied at 0
    x[0, :, 1, 1] = 0.5
    outs = []
    for fn in (ref, lambda t: triton_cbam.fused_cbam(ref, t)):
        xi = x.clone().requires_grad_()
        fn(xi).sum().backward()
        outs.append(xi.grad)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_on_cuda(dtype) -> None:
    (y0, _, _), (y1, _, _) = reference_and_fused((4, 64, 14, 14), True, None, False, dtype)
    torch.testing.assert_close(y1.float(), y0.float(), rtol=2e-2, atol=2e-2)


def test_unsupported_options_are_refused() -> None:
    with pytest.raises(ValueError, match="channel-first"):
        triton_cbam.fused_cbam(CBAM(8, order="parallel"), torch.randn(1, 8, 2, 2))


@pytest.mark.parametrize("mode", [MODE])
def test_cbam_impl_triton_dispatches_to_the_kernels(mode, monkeypatch) -> None:
    torch.manual_seed(3)
    ref = CBAM(24, impl="reference").to(DEVICE)
    fused = CBAM(24, impl="triton").to(DEVICE)
    fused.load_state_dict(ref.state_dict())
    calls = []
    real = triton_cbam.fused_cbam
    monkeypatch.setattr(triton_cbam, "fused_cbam",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(2, 24, 5, 6, device=DEVICE)
    r = torch.randn(2, 24, 5, 6, device=DEVICE)
    torch.testing.assert_close(fused(x), ref(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused(x, identity=r), ref(x, identity=r), rtol=1e-5, atol=1e-6)
    assert len(calls) == 2
    with pytest.raises(ValueError, match="channel-first"):
        CBAM(8, order="parallel", impl="triton")
