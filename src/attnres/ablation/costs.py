"""Costs of a grid's configurations, measured together in one process.

`measure_costs` builds every configuration's network (fresh weights: cost does not depend
on their values) and measures, in turns A B C A B C ... so that every configuration sees
the same machine state, the median and interquartile range of: batch-1 inference latency,
and the time of one SGD training step (forward, cross-entropy, backward, step, with the
run's autocast and memory layout) at the run's batch size; then each network's peak tensor
memory during one step (`attnres.analysis.bench.peak_step_memory`: the allocator's peak
above what was allocated before the step, after the timed steps, so every row is measured
the same way whatever its order), its parameters and its FLOPs. The machine and its thread
count are recorded with the figures: ratios between rows of one file are what can be
compared, absolute numbers only on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast_context, resolve_amp
from ..training import upgrade_config_dict

COSTS_FORMAT = "attnres-costs/1"
MEMORY_STEPS = 2  # training steps whose allocator peak is taken, the largest reported


def hardware() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, threads, torch, GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "os": platform.platform(terse=True), "gpu": None}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def build_config_model(settings: Mapping[str, Any], num_classes: int) -> nn.Module:
    """The network of a TrainConfig dict, with fresh weights (no pretrained download)."""
    from ..models import build_model

    return build_model(settings.get("arch", "resnet20"), attention=settings.get("attention"),
                       placement=settings.get("placement") or "block",
                       stages=settings.get("stages"), blocks=settings.get("blocks"),
                       preset=settings.get("preset"), num_classes=num_classes,
                       attention_kwargs=dict(settings.get("attention_kwargs") or {}) or None)


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads!r}: must be >= 1")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _train_step(model: nn.Module, settings: Mapping[str, Any], batch_size: int,
                image_size: int, num_classes: int, device: torch.device
                ) -> Callable[[], None]:
    """One SGD step of `model` on a fixed random batch `(batch_size, 3, S, S)`, with the
    run's autocast and memory layout (those of `attnres train`)."""
    amp = resolve_amp(upgrade_config_dict(settings).get("amp", "auto"), device)
    channels_last = bool(settings.get("channels_last", True)) and (device.type == "cuda"
                                                                    or amp.enabled)
    layout = torch.channels_last if channels_last else torch.preserve_format
    model.to(device, memory_format=layout).train()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, 3, image_size, image_size), generator=generator)
    x = x.to(device, memory_format=layout)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(amp, device):
            logits = model(x)
        F.cross_entropy(logits.float(), y).backward()
        optimizer.step()
    return step


def _infer(model: nn.Module, image_size: int, device: torch.device) -> Callable[[], None]:
    x = torch.randn((1, 3, image_size, image_size), generator=torch.Generator().manual_seed(0))
    x = x.to(device)

    def run() -> None:
        with torch.inference_mode():
            model(x)
    return run


def _median_iqr(samples: list[float], scale: float) -> tuple[float, list[float]]:
    """(median, [first quartile, third quartile]) of `samples`, times `scale`."""
    from ..utils import median_iqr

    median, q1, q3 = median_iqr(samples)
    return median * scale, [q1 * scale, q3 * scale]


def _methods(repeats: int, train_repeats: int, warmup: int) -> dict[str, str]:
    """How each figure of `measure_costs` is measured, in words (stored beside them)."""
    from ..analysis.profile import FLOP_COUNTER

    return {
        "latency": f"batch 1, eval mode, inference_mode, fp32; median (and interquartile "
                   f"range) of {repeats} runs interleaved across the networks, after "
                   f"{warmup} untimed rounds",
        "train": f"one SGD step (forward with the run's autocast, cross-entropy, "
                 f"backward, step) at the run's batch size; median (and interquartile "
                 f"range) of {train_repeats} steps interleaved across the networks",
        "memory": f"the allocator's peak during one training step above what was "
                  f"allocated before it (the largest of {MEMORY_STEPS} steps after one "
                  f"unrecorded), each network measured alone after its timed steps "
                  f"(torch.cuda.max_memory_allocated on CUDA, the allocator's records "
                  f"through torch.profiler on CPU): tensors only, not the process's "
                  f"resident memory",
        "flops": FLOP_COUNTER,
    }


def measure_costs(configs: Mapping[str, Mapping[str, Any]], *, image_size: int,
                  num_classes: int, batch_size: int | None = None, device: str = "cpu",
                  threads: int | None = None, repeats: int = 30, train_repeats: int = 8,
                  warmup: int = 2, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Costs of each configuration (name -> TrainConfig dict), measured in this process.

    Inputs are `(B, 3, image_size, image_size)`; B is 1 for latency and `batch_size`
    (default: each configuration's own `batch_size`, else 128) for training. Returns a
    JSON-able dict: the machine, thread count, settings and methods, and per configuration
    params, flops, latency_ms and train_step_ms (medians) with latency_ms_iqr and
    train_step_ms_iqr ([q1, q3] of the repeats), train_images_per_s and peak_train_mem_mb.
    `repeats` and `train_repeats` are at least 3: a latency is never one sample.
    """
    from ..analysis.bench import peak_step_memory
    from ..utils import time_interleaved_samples
    from ..analysis.profile import count_flops, count_params
    from ..utils import resolve_device

    if not configs:
        raise ValueError("measure_costs: no configurations given")
    if repeats < 3 or train_repeats < 3 or warmup < 0:
        raise ValueError(f"repeats={repeats}, train_repeats={train_repeats}, warmup={warmup}: "
                         f"repeats must be >= 3 (a median and its spread) and warmup >= 0")
    dev = resolve_device(device)
    # other work on the machine slows every network alike (the ratios hold) but not the
    # absolute figures: record how busy it was
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    sizes = {name: int(batch_size or s.get("batch_size") or 128) for name, s in configs.items()}
    with _threads(threads):
        torch.manual_seed(0)
        models = {name: build_config_model(s, num_classes) for name, s in configs.items()}
        rows: dict[str, dict[str, Any]] = {}
        for name, model in models.items():
            rows[name] = {"params": count_params(model),
                          "flops": count_flops(model, (1, 3, image_size, image_size))}
        log(f"timing batch-1 inference of {len(models)} networks on {dev}, interleaved")
        for model in models.values():
            model.to(dev).eval()
        latency = time_interleaved_samples(
            {n: _infer(m, image_size, dev) for n, m in models.items()}, warmup=warmup,
            repeats=repeats)
        log(f"timing training steps of {len(models)} networks on {dev}, interleaved")
        steps = {n: _train_step(m, configs[n], sizes[n], image_size, num_classes, dev)
                 for n, m in models.items()}
        train = time_interleaved_samples(steps, warmup=warmup, repeats=train_repeats)
        for name, step in steps.items():
            # on CPU the first profiled step misses the frees of tensors allocated before
            # profiling began (the last step's gradients) and so over-counts: measure after
            # one such step, and report the largest of the next MEMORY_STEPS
            peaks = [peak_step_memory(step, dev) for _ in range(MEMORY_STEPS + 1)][1:]
            peak = None if None in peaks else max(peaks)
            latency_ms, latency_iqr = _median_iqr(latency[name], 1e3)
            step_ms, step_iqr = _median_iqr(train[name], 1e3)
            rows[name].update({
                "latency_ms": latency_ms, "latency_ms_iqr": latency_iqr,
                "train_step_ms": step_ms, "train_step_ms_iqr": step_iqr,
                "train_images_per_s": sizes[name] / (step_ms / 1e3),
                "peak_train_mem_mb": peak / 2**20 if peak is not None else None,
            })
        thread_count = torch.get_num_threads()
    return {
        "format": COSTS_FORMAT,
        "device": str(dev),
        "threads": thread_count,
        "machine": {**hardware(), "torch_threads": thread_count, "load_average_1min": load},
        "image_size": image_size,
        "num_classes": num_classes,
        "train_batch_size": sorted(set(sizes.values())),
        "method": _methods(repeats, train_repeats, warmup),
        "configs": rows,
    }


__all__ = ["COSTS_FORMAT", "build_config_model", "hardware", "measure_costs"]
