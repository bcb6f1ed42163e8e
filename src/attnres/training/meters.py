"""Memory of a training run, as `summary.json` reports it."""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


class MemoryMeter:
    """Memory of the training loop, in MiB, each figure named for what it is.

    `peak_mb`: CUDA only, `torch.cuda.max_memory_allocated` after a reset at the start
    (tensor memory of the whole loop); None on CPU, where the allocator keeps no such
    record over a run (the per-configuration peak of one training step is what
    `attnres ablate` measures, in costs.json).
    `process_peak_rss_mb`: the peak resident set of the whole process (VmHWM, else
    ru_maxrss): data, libraries, everything, since the process started. Not the run's own
    memory (an earlier run in the same process counts too).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device

    @property
    def method(self) -> str:
        """How `peak_mb` is measured, in words (recorded next to the number)."""
        if self.device.type == "cuda":
            return "torch.cuda.max_memory_allocated over the training loop (tensors only)"
        return ("not measured on CPU (see the ablation's costs.json for the allocator's peak "
                "of one training step)")

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        return None

    @staticmethod
    def process_peak_rss_mb() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # macOS: bytes


__all__ = ["MemoryMeter"]
