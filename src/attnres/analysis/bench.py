"""Timing: interleaved medians, so that every candidate sees the same machine state; and
`bench`, the baseline / attnres / timm comparison behind `attnres bench`.

Peak memory of a training step: on CUDA `torch.cuda.max_memory_allocated` minus what was
allocated before the step; on CPU the same quantity from the allocator's own records, read
through `torch.profiler` (`profile_memory=True`): the running sum of every allocation and
free during one step, after warm-up, and its maximum. Both count tensor memory only
(activations, gradients, optimizer temporaries), not the process's other memory.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..utils import check_image_size
from ..utils import time_interleaved  # re-exported: its callers import it from here

# attnres architecture -> timm architecture with the same blocks (timm puts its `attn_layer`
# where attnres's `block` placement does: after the block's last norm, before the add).
# The CIFAR nets (resnet20 ... resnet110), SKNet and ResNeSt have no timm counterpart here.
TIMM_ARCHS = {name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101",
                                      "resnet152", "resnext50_32x4d", "resnext101_32x8d",
                                      "wide_resnet50_2")}
# attnres attention -> timm `attn_layer` name (timm has no BAM)
TIMM_ATTENTION = {"se": "se", "eca": "eca", "cbam": "cbam"}
MODES = ("infer", "train")
FAST_ATTENTION = ("cbam", "eca", "se")  # modules with impl="fast" | "reference"


def resolve_device(device: str | torch.device) -> torch.device:
    """`device` as a torch.device, or a one-line ValueError if it is not usable here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r}: not a device name (use cpu, cuda, cuda:0)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: CUDA is not available on this machine; use cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: allowed cpu or cuda")
    return dev


def timm_model(arch: str, attention: str | None, num_classes: int) -> nn.Module:
    """timm's counterpart of `build_model(arch, attention=attention)` (no weights loaded)."""
    try:
        import timm
    except ImportError as e:
        raise ValueError("--compare timm needs timm: pip install 'attnres[bench]'") from e
    if arch not in TIMM_ARCHS:
        raise ValueError(f"arch={arch!r} has no timm counterpart; timm comparisons cover "
                         f"{', '.join(TIMM_ARCHS)}")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if attention is not None:
        if attention not in TIMM_ATTENTION:
            raise ValueError(f"attention={attention!r} has no timm counterpart; timm "
                             f"comparisons cover {', '.join(TIMM_ATTENTION)}")
        kwargs["block_args"] = {"attn_layer": TIMM_ATTENTION[attention]}
    return timm.create_model(TIMM_ARCHS[arch], pretrained=False, **kwargs)


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null: the profiler's C++ side prints start/stop and
    device-probe lines there that Python cannot filter. Python exceptions are unaffected."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_step_memory(step: Callable[[], Any], device: torch.device) -> int | None:
    """Peak tensor bytes allocated during one call of `step` above what was allocated before
    it (see the module docstring for the method); None if it cannot be measured."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with _native_stderr_silenced(), \
            torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    try:
        events = prof.profiler.kineto_results.events()
        changes = sorted((e.start_ns(), e.nbytes()) for e in events
                         if e.name() == "[memory]" and e.device_type().name == "CPU")
    except AttributeError:  # profiler internals moved: report nothing rather than guess
        return None
    current = peak = 0
    for _, nbytes in changes:
        current += nbytes
        peak = max(peak, current)
    return int(peak)


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str
               ) -> Callable[[], Any]:
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode():
                model(x)
        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return train_step


def default_image_size(arch: str) -> int:
    """32 for the CIFAR nets, 224 for the rest."""
    from ..models.resnet import ARCHS

    return 32 if arch in ARCHS and ARCHS[arch].stem == "cifar" else 224


def bench(arch: str, attention: str, *, batch_size: int = 1, image_size: int | None = None,
          device: str = "cpu", mode: str = "infer", compare: Sequence[str] = (),
          repeats: int = 20, warmup: int = 3, channels_last: bool = False,
          threads: int | None = None, placement: str = "block", impl: str | None = None,
          attention_kwargs: dict[str, Any] | None = None, seed: int = 0) -> dict[str, Any]:
    """Time the plain network (baseline), the network with attention (attnres) and, with
    `compare=("timm",)`, timm's counterpart, interleaved in one run, on random
    `(batch_size, 3, image_size, image_size)` inputs.

    mode "infer": a forward pass under `torch.inference_mode()` in eval mode; "train": one
    SGD step (forward, cross-entropy, backward, step) in train mode, plus its peak memory.
    Returns a JSON-able dict: baseline_ms, attnres_ms, timm_ms, attnres_ratio, timm_ratio
    (medians; ratios to the baseline of the same run), peak memory in MiB and
    peak_mem_ratio (train mode), params, and the settings.
    """
    from ..attention import list_attention
    from ..models import build_model

    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: allowed {', '.join(MODES)}")
    if attention not in list_attention():
        raise ValueError(f"attention={attention!r}: allowed {', '.join(list_attention())}")
    bad = [c for c in compare if c != "timm"]
    if bad:
        raise ValueError(f"compare={bad[0]!r}: allowed timm")
    for name, value in (("batch_size", batch_size), ("repeats", repeats)):
        if value < 1:
            raise ValueError(f"{name}={value!r}: must be >= 1")
    if warmup < 0:
        raise ValueError(f"warmup={warmup!r}: must be >= 0")
    if image_size is not None:
        check_image_size(image_size)
    dev = resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads!r}: must be >= 1")
        torch.set_num_threads(threads)
    image_size = image_size or default_image_size(arch)
    kwargs = dict(attention_kwargs or {})
    if impl is not None:
        if attention not in FAST_ATTENTION:
            raise ValueError(f"impl={impl!r} applies to {', '.join(FAST_ATTENTION)}, "
                             f"not {attention!r}")
        kwargs["impl"] = impl

    torch.manual_seed(seed)
    models: dict[str, nn.Module] = {"baseline": build_model(arch)}
    num_classes = models["baseline"].fc.out_features
    models["attnres"] = build_model(arch, attention=attention, placement=placement,
                                    attention_kwargs=kwargs or None)
    if "timm" in compare:
        models["timm"] = timm_model(arch, attention, num_classes)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch_size, 3, image_size, image_size, device=dev)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    steps = {}
    for name, model in models.items():
        model.to(dev, memory_format=memory_format)
        steps[name] = _make_step(model, x, y, mode)
    seconds = time_interleaved(steps, warmup=warmup, repeats=repeats)

    result: dict[str, Any] = {
        "arch": arch, "attention": attention, "placement": placement, "mode": mode,
        "batch_size": batch_size, "image_size": image_size, "device": str(dev),
        "channels_last": channels_last, "threads": torch.get_num_threads(),
        "repeats": repeats, "warmup": warmup, "impl": impl or "fast",
        "timm_arch": TIMM_ARCHS.get(arch) if "timm" in compare else None,
        "torch": torch.__version__,
    }
    for name in ("baseline", "attnres", "timm"):
        result[f"{name}_ms"] = seconds[name] * 1e3 if name in seconds else None
        result[f"{name}_params"] = (sum(p.numel() for p in models[name].parameters())
                                    if name in models else None)
    for name in ("attnres", "timm"):
        result[f"{name}_ratio"] = (seconds[name] / seconds["baseline"]
                                   if name in seconds else None)
    peaks: dict[str, int | None] = {}
    if mode == "train":
        for name, step in steps.items():
            peaks[name] = peak_step_memory(step, dev)
    for name in ("baseline", "attnres", "timm"):
        peak = peaks.get(name)
        result[f"{name}_peak_mem_mb"] = peak / 2**20 if peak is not None else None
    base_peak = peaks.get("baseline")
    for name, key in (("attnres", "peak_mem_ratio"), ("timm", "timm_peak_mem_ratio")):
        peak = peaks.get(name)
        result[key] = peak / base_peak if peak is not None and base_peak else None
    return result


def format_bench(result: dict[str, Any]) -> str:
    """A small text table of a `bench` result."""
    lines = [f"{result['arch']} + {result['attention']} ({result['placement']}), "
             f"{result['mode']}, batch {result['batch_size']}, {result['image_size']}px, "
             f"{result['device']}, {result['threads']} threads"
             f"{', channels_last' if result['channels_last'] else ''}; "
             f"medians of {result['repeats']} interleaved runs",
             f"{'model':<10}{'ms':>10}{'ratio':>8}{'peak MiB':>10}{'mem ratio':>10}"]
    for name in ("baseline", "attnres", "timm"):
        ms = result.get(f"{name}_ms")
        if ms is None:
            continue
        ratio = 1.0 if name == "baseline" else result[f"{name}_ratio"]
        mem = result.get(f"{name}_peak_mem_mb")
        mem_ratio = (1.0 if name == "baseline" and mem is not None else
                     result.get("peak_mem_ratio" if name == "attnres" else
                                "timm_peak_mem_ratio"))
        lines.append(f"{name:<10}{ms:>10.2f}{ratio:>8.3f}"
                     f"{'' if mem is None else f'{mem:.1f}':>10}"
                     f"{'' if mem_ratio is None else f'{mem_ratio:.3f}':>10}")
    return "\n".join(lines)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON to `path` atomically (temp file beside it, then rename)."""
    path = Path(path)
    if path.parent and not path.parent.is_dir():
        raise FileNotFoundError(f"--json {str(path)!r}: folder {str(path.parent)!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
