"""Timing: interleaved medians, so that every candidate sees the same machine state, and
`bench`, the baseline / attnres / timm comparison behind `attnres bench` (the standard table
of `attnres bench --suite` is `analysis.suite`).

Peak memory of a training step: on CUDA `torch.cuda.max_memory_allocated` minus what was
allocated before the step; on CPU the same quantity from the allocator's own records, read
through `torch.profiler` (`profile_memory=True`): the running sum of every allocation and
free during one step, after warm-up, and its maximum. Both count tensor memory only
(activations, gradients, optimizer temporaries), not the process's other memory.

Clocks: "wall" (`time.perf_counter`, the default) or "cpu" (`time.process_time`, the CPU
time of the process: on a machine shared with other jobs it leaves out the time the process
waits for a core, and keeps what it computes; meaningful with CPU devices only).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import AmpChoice, autocast_context, cpu_bf16_flags, cpu_model, resolve_amp
from ..utils import (CLOCKS, atomic_write_json, check_image_size, median_iqr, resolve_device,
                     time_interleaved, time_interleaved_samples)  # time_interleaved: re-exported

MODES = ("infer", "train")
# attnres architecture -> timm architecture with the same blocks (timm puts its `attn_layer`
# where attnres's `block` placement does: after the block's last norm, before the add).
# The CIFAR nets (resnet20 ... resnet110), SKNet and ResNeSt have no timm counterpart here.
TIMM_ARCHS = {name: name for name in ("resnet18", "resnet34", "resnet50", "resnet101",
                                      "resnet152", "resnext50_32x4d", "resnext101_32x8d",
                                      "wide_resnet50_2")}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()






def timm_attention() -> list[str]:
    """The registered attention modules that timm has (their `timm_name`)."""
    from ..attention import attention_spec, list_attention

    return [n for n in list_attention() if attention_spec(n).timm_name]


def timm_model(arch: str, attention: str | None, num_classes: int) -> nn.Module:
    """timm's counterpart of `build_model(arch, attention=attention)` (no weights loaded)."""
    from ..attention import attention_spec

    try:
        import timm
    except ImportError as e:
        raise ValueError("--compare timm needs timm: pip install 'attnres[bench]'") from e
    if arch not in TIMM_ARCHS:
        raise ValueError(f"arch={arch!r} has no timm counterpart; timm comparisons cover "
                         f"{', '.join(TIMM_ARCHS)}")
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if attention is not None:
        name = attention_spec(attention).timm_name
        if name is None:
            raise ValueError(f"attention={attention!r} has no timm counterpart; timm "
                             f"comparisons cover {', '.join(timm_attention())}")
        kwargs["block_args"] = {"attn_layer": name}
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


def _make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mode: str,
               amp: AmpChoice) -> Callable[[], Any]:
    device = x.device
    if mode == "infer":
        model.eval()

        def infer() -> None:
            with torch.inference_mode(), autocast_context(amp, device):
                model(x)
        return infer
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=amp.use_grad_scaler)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(amp, device):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return train_step


def default_image_size(arch: str) -> int:
    """32 for the CIFAR nets, 224 for the rest."""
    from ..models.resnet import ARCHS

    return 32 if arch in ARCHS and ARCHS[arch].stem == "cifar" else 224


def _check_common(mode: str, repeats: int, batch_sizes: Sequence[int], clock: str,
                  device: str, threads: int | None) -> torch.device:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: allowed {', '.join(MODES)}")
    for name, value in (("repeats", repeats), *(("batch_size", b) for b in batch_sizes)):
        if value < 1:
            raise ValueError(f"{name}={value!r}: must be >= 1")
    if clock not in CLOCKS:
        raise ValueError(f"clock={clock!r}: allowed {', '.join(CLOCKS)}")
    dev = resolve_device(device)
    if clock == "cpu" and dev.type != "cpu":
        raise ValueError(f"clock='cpu' times CPU work only; use clock='wall' on {dev}")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads!r}: must be >= 1")
        torch.set_num_threads(threads)
    return dev


def _inputs(arch_model: nn.Module, batch: int, size: int, dev: torch.device,
            channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, 3, size, size, device=dev).contiguous(memory_format=fmt)
    y = torch.randint(0, arch_model.fc.out_features, (batch,), device=dev)
    return x, y


def run_cases(cases: dict[str, tuple[nn.Module, AmpChoice, torch.Tensor, torch.Tensor]],
              mode: str, *, warmup: int, repeats: int, clock: str = "wall",
              memory: bool = True) -> dict[str, dict[str, Any]]:
    """Time `{name: (model, amp, x, y)}` in one interleaved run (models already on their
    device and memory format): per case the median ms, its interquartile range `ms_iqr`
    ([q1, q3] in ms), the number of timed `samples`, images/s (batch over the median) and,
    in train mode with `memory`, the peak step memory in MiB (None if not measurable)."""
    steps = {name: _make_step(m, x, y, mode, amp) for name, (m, amp, x, y) in cases.items()}
    samples = time_interleaved_samples(steps, warmup=warmup, repeats=repeats, clock=clock)
    out: dict[str, dict[str, Any]] = {}
    for name, step in steps.items():
        batch = cases[name][2].shape[0]
        median, q1, q3 = median_iqr(samples[name])
        peak = (peak_step_memory(step, cases[name][2].device)
                if mode == "train" and memory else None)
        out[name] = {"ms": median * 1e3, "ms_iqr": [q1 * 1e3, q3 * 1e3],
                     "samples": len(samples[name]), "images_per_s": batch / median,
                     "peak_mem_mb": None if peak is None else peak / 2**20,
                     "params": sum(p.numel() for p in cases[name][0].parameters())}
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _module_kwargs(attention: str, impl: str | None,
                   attention_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """The attention module's keyword arguments, `impl` checked against the registry."""
    from ..attention import attention_spec, list_attention

    kwargs = dict(attention_kwargs or {})
    if impl is not None:
        impls = attention_spec(attention).impls
        if impl not in impls or impls == ("reference",):
            with_impl = [n for n in list_attention() if len(attention_spec(n).impls) > 1]
            raise ValueError(f"impl={impl!r} applies to {', '.join(with_impl)} (for "
                             f"{attention!r}: {', '.join(impls)})")
        kwargs["impl"] = impl
    return kwargs


def bench(arch: str, attention: str, *, batch_size: int = 1, image_size: int | None = None,
          device: str = "cpu", mode: str = "infer", compare: Sequence[str] = (),
          repeats: int = 20, warmup: int = 3, channels_last: bool = False,
          threads: int | None = None, placement: str = "block", impl: str | None = None,
          attention_kwargs: dict[str, Any] | None = None, seed: int = 0,
          amp: str | bool | None = "auto", clock: str = "wall",
          compile: bool = False) -> dict[str, Any]:
    """Time the plain network (baseline), the network with attention (attnres) and, with
    `compare=("timm",)`, timm's counterpart, interleaved in one run, on random
    `(batch_size, 3, image_size, image_size)` inputs, all at the precision `amp` chooses
    (`precision.resolve_amp`: "auto", "bf16", "fp16", "fp32") and memory format.

    mode "infer": a forward pass under `torch.inference_mode()` in eval mode; "train": one
    SGD step (forward, cross-entropy, backward, step) in train mode, plus its peak memory.
    `compile`: every model through `torch.compile` (inductor) first; the compilation
    happens in the untimed warm-up (at least one run), so the figures are steady-state.
    Returns a JSON-able dict: baseline_ms, attnres_ms, timm_ms, attnres_ratio, timm_ratio
    (medians; ratios to the baseline of the same run), their spread `{name}_ms_iqr` ([first,
    third quartile] in ms) and `{name}_samples` (timed calls per model, = `repeats`),
    images/s, peak memory in MiB and
    peak_mem_ratio (train mode), params, the precision chosen and why, and the settings.
    """
    from ..attention import list_attention
    from ..models import build_model

    if attention not in list_attention():
        raise ValueError(f"attention={attention!r}: allowed {', '.join(list_attention())}")
    bad = [c for c in compare if c != "timm"]
    if bad:
        raise ValueError(f"compare={bad[0]!r}: allowed timm")
    if warmup < 0 or (compile and warmup < 1):
        raise ValueError(f"warmup={warmup!r}: must be >= 0 (>= 1 with compile, which "
                         f"compiles in the warm-up)")
    if image_size is not None:
        check_image_size(image_size)
    dev = _check_common(mode, repeats, [batch_size], clock, device, threads)
    choice = resolve_amp(amp, dev)
    image_size = image_size or default_image_size(arch)
    kwargs = _module_kwargs(attention, impl, attention_kwargs)

    torch.manual_seed(seed)
    models: dict[str, nn.Module] = {"baseline": build_model(arch)}
    num_classes = models["baseline"].fc.out_features
    models["attnres"] = build_model(arch, attention=attention, placement=placement,
                                    attention_kwargs=kwargs or None)
    if "timm" in compare:
        models["timm"] = timm_model(arch, attention, num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x, y = _inputs(models["baseline"], batch_size, image_size, dev, channels_last)
    for name, m in models.items():
        m.to(dev, memory_format=fmt)
        if compile:
            models[name] = torch.compile(m)
    cases = {n: (m, choice, x, y) for n, m in models.items()}
    runs = run_cases(cases, mode, warmup=warmup, repeats=repeats, clock=clock)

    result: dict[str, Any] = {
        "arch": arch, "attention": attention, "placement": placement, "mode": mode,
        "batch_size": batch_size, "image_size": image_size, "device": str(dev),
        "channels_last": channels_last, "threads": torch.get_num_threads(),
        "repeats": repeats, "warmup": warmup, "impl": impl or "fast", "clock": clock,
        "compile": compile,
        "amp": choice.dtype, "amp_reason": choice.reason,
        "timm_arch": TIMM_ARCHS.get(arch) if "timm" in compare else None,
        "torch": torch.__version__,
    }
    base = runs["baseline"]
    for name in ("baseline", "attnres", "timm"):
        r = runs.get(name, {})
        result[f"{name}_ms"] = r.get("ms")
        result[f"{name}_ms_iqr"] = r.get("ms_iqr")
        result[f"{name}_samples"] = r.get("samples")
        result[f"{name}_images_per_s"] = r.get("images_per_s")
        result[f"{name}_params"] = r.get("params")
        result[f"{name}_peak_mem_mb"] = r.get("peak_mem_mb")
    for name, key in (("attnres", "peak_mem_ratio"), ("timm", "timm_peak_mem_ratio")):
        r = runs.get(name, {})
        result[f"{name}_ratio"] = _ratio(r.get("ms"), base["ms"])
        result[key] = _ratio(r.get("peak_mem_mb"), base["peak_mem_mb"])
    return result


def threads_text(n: int) -> str:
    """"1 thread", "2 threads"."""
    return f"{n} thread" + ("" if n == 1 else "s")


def format_bench(result: dict[str, Any]) -> str:
    """A small text table of a `bench` result: per model the median ms with its interquartile
    range, the ratio to the baseline, images/s and, in train mode, peak memory."""
    train = result["mode"] == "train"
    samples = result.get("baseline_samples") or result["repeats"]
    lines = [f"{result['arch']} + {result['attention']} ({result['placement']}), "
             f"{result['mode']}, batch {result['batch_size']}, {result['image_size']}px, "
             f"{result['device']}, {threads_text(result['threads'])}, {result['amp']}"
             f"{', channels_last' if result['channels_last'] else ''}"
             f"{', torch.compile' if result.get('compile') else ''}; "
             f"medians of {samples} interleaved runs ({result['clock']} clock), "
             f"IQR: their interquartile range",
             f"precision: {result['amp_reason']}",
             f"{'model':<10}{'ms':>10}{'IQR ms':>16}{'ratio':>8}{'img/s':>9}"
             + (f"{'peak MiB':>10}{'mem ratio':>10}" if train else "")]
    for name in ("baseline", "attnres", "timm"):
        ms = result.get(f"{name}_ms")
        if ms is None:
            continue
        q1, q3 = result.get(f"{name}_ms_iqr") or (ms, ms)
        ratio = 1.0 if name == "baseline" else result[f"{name}_ratio"]
        line = (f"{name:<10}{ms:>10.2f}{f'{q1:.2f}-{q3:.2f}':>16}{ratio:>8.3f}"
                f"{result[f'{name}_images_per_s']:>9.1f}")
        if train:
            mem = result.get(f"{name}_peak_mem_mb")
            mem_ratio = (1.0 if name == "baseline" and mem is not None else
                         result.get("peak_mem_ratio" if name == "attnres" else
                                    "timm_peak_mem_ratio"))
            line += (f"{'' if mem is None else f'{mem:.1f}':>10}"
                     f"{'' if mem_ratio is None else f'{mem_ratio:.3f}':>10}")
        lines.append(line)
    if train:
        lines.append("peak MiB: the allocator's peak of one training step above what was "
                     "allocated before it (tensor memory only)")
    return "\n".join(lines)


def machine_info(device: torch.device) -> dict[str, Any]:
    """What a benchmark ran on: CPU model and its native bf16 flags, GPU, torch, threads."""
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_bf16_flags": cpu_bf16_flags(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def write_json(path: str, obj: Any) -> None:
    """`obj` as indented JSON at `path`, written atomically (`utils.atomic_write_json`)."""
    atomic_write_json(path, obj)


__all__ = ["CLOCKS", "MODES", "TIMM_ARCHS", "bench", "default_image_size", "format_bench",
           "machine_info", "peak_step_memory", "run_cases", "threads_text", "time_interleaved",
           "timm_attention", "timm_model", "write_json"]
