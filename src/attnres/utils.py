"""Infrastructure every layer shares: the one atomic writer, "did you mean", device choice,
interleaved timing.

This module sits below `attention` in the import order: it imports nothing from attnres.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Writer = Callable[[io.BufferedWriter], None]

# The largest image side any command takes. At 4096 px one image's first feature map in a
# ResNet (64 channels at half the side, float32) is already 1 GiB, and a forward pass keeps
# tens of such maps; no network here runs on larger inputs in the memory of one machine.
MAX_IMAGE_SIZE = 4096


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str | Writer,
                 check: Callable[[str], None] | None = None) -> Path:
    """Write `path` through a temporary file in the same folder: write, fsync, rename, fsync
    the folder. A kill at any moment leaves the old file or the new one, never a mix.

    `data`: bytes, text (UTF-8) or a function that writes to a binary file object.
    `check(tmp_path)` may reject the written file (raise) before it replaces the old one.
    Every file is given the usual permissions (0666 less the umask), like `open()` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """`obj` as indented JSON (with a final newline), written atomically."""
    return atomic_write(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def closest(name: object, choices: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest of `choices` to `name`, or ''."""
    match = difflib.get_close_matches(str(name), list(choices), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_image_size(value: Any, name: str = "image_size", *, low: int = 1) -> None:
    """ValueError unless `value` is a whole number of pixels in [low, MAX_IMAGE_SIZE]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= \
            MAX_IMAGE_SIZE:
        raise ValueError(f"{name}={value!r}: must be a whole number of pixels in [{low}, "
                         f"{MAX_IMAGE_SIZE}] (at {MAX_IMAGE_SIZE} px one feature map of a "
                         f"ResNet is already 1 GiB per image)")


def resolve_device(device: Any = "auto") -> Any:
    """`device` ("auto", "cpu", "cuda", "cuda:N" or a torch.device) as a torch.device.

    "auto" is CUDA when available, else CPU. Raises a one-line ValueError when the device
    is not a device name or is not usable on this machine.
    """
    import torch

    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r}: not a device name (use auto, cpu, cuda, "
                         f"cuda:0)") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: allowed auto, cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_interleaved_samples(fns: dict[str, Callable[[], Any]], *, warmup: int = 3,
                             repeats: int = 20, clock: str = "wall") -> dict[str, list[float]]:
    """Seconds of each call of each function, timed in turns (A B C A B C ...), so that
    every candidate sees the same machine state; `repeats` samples per function, after
    `warmup` untimed rounds. CUDA work is waited for after each call. `clock`: "wall"
    (perf_counter) or "cpu" (this process's CPU time, which leaves out the time spent
    waiting for a core on a shared machine)."""
    import torch

    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: allowed {', '.join(CLOCKS)}")
    now = CLOCKS[clock]

    def sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            fn()
            sync()
            times[name].append(now() - start)
    return times


def median_iqr(samples: Sequence[float]) -> tuple[float, float, float]:
    """(median, first quartile, third quartile) of `samples` (one sample: itself thrice)."""
    if not samples:
        raise ValueError("median_iqr: no samples")
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
    return statistics.median(samples), q1, q3


def time_interleaved(fns: dict[str, Callable[[], Any]], *, warmup: int = 3,
                     repeats: int = 20, clock: str = "wall") -> dict[str, float]:
    """Median seconds per call of each function (`time_interleaved_samples`)."""
    samples = time_interleaved_samples(fns, warmup=warmup, repeats=repeats, clock=clock)
    return {name: statistics.median(t) for name, t in samples.items()}


__all__ = ["CLOCKS", "MAX_IMAGE_SIZE", "atomic_write", "atomic_write_json", "check_image_size",
           "closest", "median_iqr", "resolve_device", "time_interleaved",
           "time_interleaved_samples"]
