"""Memory bandwidth of the CBAM block against a plain copy measured in the same run."""

from __future__ import annotations

from typing import Any

import torch

from ..attention import CBAM
from .bench import time_interleaved

# Full-size tensor transfers per CBAM forward: the fused path reads x three times
# (channel stats, gated pixel stats, final product) and writes y once.
FUSED_PASSES = 4


def cbam_block_bandwidth(shape: tuple[int, int, int, int] = (256, 256, 56, 56), *,
                         device: str = "cuda", dtype: torch.dtype = torch.float16,
                         channels_last: bool = True, repeats: int = 20) -> dict[str, Any]:
    """Time CBAM forward (eager reference, and fused Triton where it runs) and a plain
    copy of the same `(B, C, H, W)` tensor, interleaved in one run.

    Returns milliseconds, GB/s of the copy (read + write), and for each implementation the
    GB/s it achieves counting `FUSED_PASSES` transfers of the tensor, and that figure as a
    fraction of the copy's."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device='cpu'")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
    dst = torch.empty_like(x)
    module = CBAM(shape[1]).to(device=device, dtype=dtype).eval()
    fns = {"copy": lambda: dst.copy_(x), "eager": lambda: module(x)}
    if device == "cuda":
        from ..kernels import triton_cbam
        if triton_cbam.available():
            fns["fused"] = lambda: triton_cbam.fused_cbam(module, x)
    with torch.no_grad():
        times = time_interleaved(fns, warmup=3, repeats=repeats)
    nbytes = x.numel() * x.element_size()
    copy_gbs = 2 * nbytes / times["copy"] / 1e9
    result: dict[str, Any] = {"shape": list(shape), "dtype": str(dtype), "device": device,
                              "copy_ms": times["copy"] * 1e3, "copy_gbs": copy_gbs}
    for name in fns.keys() - {"copy"}:
        gbs = FUSED_PASSES * nbytes / times[name] / 1e9
        result[f"{name}_ms"] = times[name] * 1e3
        result[f"{name}_gbs"] = gbs
        result[f"{name}_fraction_of_copy"] = gbs / copy_gbs
    return result
