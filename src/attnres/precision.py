"""Which numeric precision to train and run in: one decision, `resolve_amp`, for every command.

    resolve_amp("auto", "cuda")  -> bf16 autocast if the GPU supports bf16, else fp16 + GradScaler
    resolve_amp("auto", "cpu")   -> bf16 autocast on a CPU with native bf16 instructions
                                    (/proc/cpuinfo flag amx_bf16 or avx512_bf16), else fp32
    resolve_amp("bf16" | "fp16" | "fp32", device), resolve_amp(True | False | None, device)

`autocast_context(choice, device)` is the matching `torch.autocast` (or a no-op for fp32).
The environment variable ATTNRES_CPU_BF16=0 (or 1) overrides what /proc/cpuinfo says, for a
virtual machine whose flags are wrong and for tests that must not depend on the CPU.
This module sits at the bottom of the import order: it imports only torch and attnres.utils.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .utils import closest

REQUESTS = ("auto", "bf16", "fp16", "fp32")
# /proc/cpuinfo flags that mean the CPU computes bf16 dot products natively (Intel AMX,
# AVX-512 BF16 on Intel Cooper Lake+ and AMD Zen 4+); without them bf16 is emulated and slower.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPU_BF16_ENV = "ATTNRES_CPU_BF16"
_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32",
            "float": "fp32", "none": "fp32", "off": "fp32", "on": "auto"}
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class AmpChoice:
    """The resolved precision: autocast on or off, its dtype ("bf16", "fp16" or "fp32"),
    whether fp16 needs a GradScaler, and why this was chosen (for logs and bench reports)."""

    enabled: bool
    dtype: str
    use_grad_scaler: bool
    reason: str

    @property
    def torch_dtype(self) -> torch.dtype:
        """The autocast dtype (torch.float32 when autocast is off)."""
        return _DTYPES[self.dtype]


def cpu_flags(cpuinfo: str | None = None, path: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags from cpuinfo text (read from `path` when not given); empty if
    there is no such file (not Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text(errors="replace")
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            flags.update(value.split())
    return flags


def cpu_model(cpuinfo: str | None = None, path: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name from cpuinfo text (or `path`), else the platform's processor."""
    if cpuinfo is None:
        try:
            cpuinfo = Path(path).read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    import platform

    return platform.processor() or platform.machine() or "unknown"


def cpu_bf16_flags(cpuinfo: str | None = None, path: str | Path = "/proc/cpuinfo") -> list[str]:
    """Which of `NATIVE_BF16_FLAGS` the CPU has, in that order."""
    flags = cpu_flags(cpuinfo, path)
    return [f for f in NATIVE_BF16_FLAGS if f in flags]


def cpu_has_native_bf16(cpuinfo: str | None = None,
                        path: str | Path = "/proc/cpuinfo") -> bool:
    """True if cpuinfo (the text, or the file at `path`) lists amx_bf16 or avx512_bf16."""
    return bool(cpu_bf16_flags(cpuinfo, path))


def amp_request(request: str | bool | None) -> str:
    """`request` in canonical form ("auto", "bf16", "fp16" or "fp32"; True is "auto", False
    and None "fp32", "bfloat16" "bf16", ...); ValueError naming it otherwise."""
    if request is None or request is False:
        return "fp32"
    if request is True:
        return "auto"
    if not isinstance(request, str):
        raise ValueError(f"amp={request!r}: allowed {', '.join(REQUESTS)}, True, False, None")
    key = _ALIASES.get(request.lower(), request.lower())
    if key not in REQUESTS:
        raise ValueError(f"amp={request!r}{closest(request.lower(), REQUESTS)}; allowed "
                         f"{', '.join(REQUESTS)}")
    return key


def resolve_amp(request: str | bool | None, device: Any,
                cpuinfo: str | None = None) -> AmpChoice:
    """The precision to use on `device` (a torch.device or its name) for `request`:
    "auto", "bf16", "fp16", "fp32", True (= "auto"), False or None (= "fp32").

    auto: CUDA -> bf16 autocast when `torch.cuda.is_bf16_supported()`, else fp16 with a
    GradScaler; CPU -> bf16 autocast when the CPU has native bf16 (`cpu_has_native_bf16`,
    read from `cpuinfo` text when given), else fp32. An explicit "bf16" is honoured on any
    device (slow where it is emulated); "fp16" needs CUDA (CPU autocast has no fp16 scaler).
    """
    key = amp_request(request)
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    cuda = dev.type == "cuda"
    if key == "fp32":
        return AmpChoice(False, "fp32", False, f"fp32 requested ({request!r})")
    if key == "fp16":
        if not cuda:
            raise ValueError(f"amp={request!r} needs a CUDA device (got {dev.type}); allowed "
                             "on CPU: auto, bf16, fp32")
        return AmpChoice(True, "fp16", True, "fp16 requested: autocast with a GradScaler")
    if key == "bf16":
        return AmpChoice(True, "bf16", False, f"bf16 requested on {dev.type}")
    if cuda:
        if torch.cuda.is_bf16_supported():
            return AmpChoice(True, "bf16", False, "auto: this GPU supports bf16")
        return AmpChoice(True, "fp16", True, "auto: this GPU has no bf16; fp16 + GradScaler")
    if dev.type == "cpu":
        native = cpu_bf16_flags(cpuinfo)
        forced = os.environ.get(CPU_BF16_ENV) if cpuinfo is None else None
        if forced is not None:
            if forced not in ("0", "1"):
                raise ValueError(f"{CPU_BF16_ENV}={forced!r}: allowed 0 or 1")
            native = [f"{CPU_BF16_ENV}={forced}"] if forced == "1" else []
        if native:
            return AmpChoice(True, "bf16", False,
                             f"auto: the CPU has native bf16 ({', '.join(native)})")
        why = (f"{CPU_BF16_ENV}=0" if forced == "0"
               else "no amx_bf16 / avx512_bf16")
        return AmpChoice(False, "fp32", False, f"auto: the CPU has no native bf16 ({why})")
    return AmpChoice(False, "fp32", False, f"auto: no mixed precision on {dev.type}")


def autocast_context(choice: AmpChoice, device: Any) -> contextlib.AbstractContextManager:
    """`torch.autocast` for `choice` on `device`, or a no-op context when it is off."""
    if not choice.enabled:
        return contextlib.nullcontext()
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    return torch.autocast(dev.type, dtype=choice.torch_dtype)


__all__ = ["AmpChoice", "CPU_BF16_ENV", "NATIVE_BF16_FLAGS", "REQUESTS", "amp_request",
           "autocast_context", "cpu_bf16_flags", "cpu_flags", "cpu_has_native_bf16", "cpu_model",
           "resolve_amp"]
