"""Peak memory of a training run, as `summary.json` reports it."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


class MemoryMeter:
    """Peak memory of the training loop, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (tensors only, after a reset at the start).
    CPU: how far the process's resident set rose above its size at the start: the peak
    (VmHWM, reset through /proc/self/clear_refs on Linux; otherwise ru_maxrss, which cannot
    be reset and so may include earlier peaks) minus the resident size at the start. An
    estimate: the allocator may reuse memory the process already held.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_rss_kb = 0
        self.can_reset = False

    @property
    def method(self) -> str:
        """How `peak_mb` is measured, in words (recorded next to the number)."""
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated"
        return "peak resident set size rise above the start (VmHWM)"

    @staticmethod
    def _status_kb(key: str) -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.can_reset = True
        except OSError:
            self.can_reset = False
        rss = self._status_kb("VmRSS")
        self.start_rss_kb = rss if rss is not None else self._maxrss_kb()

    @staticmethod
    def _maxrss_kb() -> int:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak  # macOS reports bytes

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        peak = self._status_kb("VmHWM") if self.can_reset else None
        peak = peak if peak is not None else self._maxrss_kb()
        return max(0, peak - self.start_rss_kb) / 1024


__all__ = ["MemoryMeter"]
