"""Figures of a model: parameters, FLOPs, activation memory, latency."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

FLOP_COUNTER = ("torch.utils.flop_counter.FlopCounterMode (counts convolutions and matrix "
                "products, 2 FLOPs per multiply-add; ignores pooling, sigmoid, softmax and "
                "elementwise products, so it understates attention's real cost)")


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> int:
    """Forward FLOPs for one input of `input_shape` `(B, C, H, W)`, see `FLOP_COUNTER`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(input_shape, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the tensors a training-mode forward keeps for the backward pass (each
    storage counted once; parameters excluded): the activation memory of one step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    was_training = model.training
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    model.train(was_training)
    return sum(storages.values())


def profile_model(arch: str, attention: str | None = None, *, placement: str = "block",
                  image_size: int | None = None, batch_size: int = 1, device: str = "cpu",
                  attention_kwargs: dict[str, Any] | None = None, repeats: int = 10,
                  threads: int | None = None) -> dict[str, Any]:
    """Static and measured figures of `build_model(arch, attention=...)` and of the plain
    network beside it: parameters, forward FLOPs (see `FLOP_COUNTER`), activation memory of a
    training forward (`activation_bytes`) and inference latency (median of `repeats`
    interleaved runs under `torch.inference_mode()`, with their interquartile range
    `latency_ms_iqr`), for `(batch_size, 3, S, S)` inputs."""
    from ..models import build_model
    from ..utils import median_iqr, resolve_device, time_interleaved_samples
    from .bench import default_image_size

    dev = resolve_device(device)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads={threads!r}: must be >= 1")
        torch.set_num_threads(threads)
    if batch_size < 1 or repeats < 1:
        raise ValueError(f"batch_size={batch_size!r}, repeats={repeats!r}: must be >= 1")
    image_size = image_size or default_image_size(arch)
    torch.manual_seed(0)
    models = {"baseline": build_model(arch)}
    if attention is not None:
        models["attnres"] = build_model(arch, attention=attention, placement=placement,
                                        attention_kwargs=attention_kwargs)
    shape = (batch_size, 3, image_size, image_size)
    x = torch.randn(shape, device=dev)
    rows: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        model.to(dev)
        rows[name] = {"params": count_params(model),
                      "flops": count_flops(model, shape),
                      "activation_mb": activation_bytes(model, x) / 2**20}
        model.eval()

    def infer(model: nn.Module) -> Any:
        def run() -> None:
            with torch.inference_mode():
                model(x)
        return run

    seconds = time_interleaved_samples({n: infer(m) for n, m in models.items()}, warmup=2,
                                       repeats=repeats)
    for name in models:
        median, q1, q3 = median_iqr(seconds[name])
        rows[name]["latency_ms"] = median * 1e3
        rows[name]["latency_ms_iqr"] = [q1 * 1e3, q3 * 1e3]
    result: dict[str, Any] = {"arch": arch, "attention": attention, "placement": placement,
                              "input_shape": list(shape), "device": str(dev),
                              "threads": torch.get_num_threads(), "flop_counter": FLOP_COUNTER,
                              **rows}
    if "attnres" in rows:
        base, attn = rows["baseline"], rows["attnres"]
        result["overhead"] = {key: attn[key] / base[key] - 1 if base[key] else None
                              for key in ("params", "flops", "activation_mb", "latency_ms")}
    return result


def format_profile(result: dict[str, Any]) -> str:
    """A text table of a `profile_model` result."""
    from .bench import threads_text

    lines = [f"{result['arch']} + {result['attention']} ({result['placement']}), input "
             f"{tuple(result['input_shape'])}, {result['device']}, "
             f"{threads_text(result['threads'])}",
             f"{'':<12}{'params':>14}{'GFLOPs':>10}{'act. MiB':>10}{'latency ms':>12}"
             f"{'IQR ms':>16}"]
    for name in ("baseline", "attnres"):
        if name in result:
            r = result[name]
            q1, q3 = r.get("latency_ms_iqr") or (r["latency_ms"], r["latency_ms"])
            lines.append(f"{name:<12}{r['params']:>14,}{r['flops'] / 1e9:>10.3f}"
                         f"{r['activation_mb']:>10.1f}{r['latency_ms']:>12.2f}"
                         f"{f'{q1:.2f}-{q3:.2f}':>16}")
    if "overhead" in result:
        o = result["overhead"]
        lines.append(f"{'overhead':<12}" + "".join(
            f"{'' if o[k] is None else f'{100 * o[k]:+.2f}%':>{w}}"
            for k, w in (("params", 14), ("flops", 10), ("activation_mb", 10),
                         ("latency_ms", 12))))
    lines.append("latency: median of interleaved runs; IQR: their interquartile range")
    lines.append(f"FLOPs: {result['flop_counter']}")
    lines.append("act. MiB: tensors a training forward keeps for backward (saved-tensor hooks, "
                 "each storage once, parameters excluded)")
    return "\n".join(lines)
