"""`attnres bench --suite`: the standard cost table of attention in one run.

- Training: ResNet-20 (32 px, batch 128, one SGD step) plain and with each registered gate
  module (SE, ECA, CBAM, BAM), in bf16 autocast and in fp32, all timed in turns in one run:
  step-time ratios to the plain network of the same precision, images/s, peak-memory
  ratios, and the plain network's bf16-over-fp32 speed-up.
- Inference: ResNet-50 (224 px) plain and with CBAM (and timm's CBAM with `compare=("timm",)`)
  at batch 1 and batch 16, bf16 and fp32, each batch size in one interleaved run.

Every model is channels_last unless `channels_last=False`. The result names the CPU model and
its native bf16 flags; `format_suite` makes the Markdown table, `write_suite` the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..precision import resolve_amp
from ..utils import atomic_write, atomic_write_json
from .bench import (_check_common, _inputs, _ratio, default_image_size, machine_info,
                    run_cases, timm_model)

PRECISIONS = ("bf16", "fp32")


def _build(arch: str, attention: str | None, dev: torch.device, fmt: torch.memory_format,
           seed: int) -> torch.nn.Module:
    from ..models import build_model

    torch.manual_seed(seed)
    return build_model(arch, attention=attention).to(dev, memory_format=fmt)


def _with_ratios(runs: dict[str, dict[str, Any]], base: str) -> dict[str, dict[str, Any]]:
    for r in runs.values():
        r["ratio"] = _ratio(r["ms"], runs[base]["ms"])
        r["mem_ratio"] = _ratio(r["peak_mem_mb"], runs[base]["peak_mem_mb"])
    return runs


def suite(*, device: str = "cpu", rounds: int = 5, warmup: int = 2, threads: int | None = None,
          compare: Sequence[str] = (), precisions: Sequence[str] = PRECISIONS,
          train_arch: str = "resnet20", train_batch: int = 128,
          train_image_size: int | None = None, attentions: Sequence[str] | None = None,
          infer_arch: str = "resnet50", infer_batches: Sequence[int] = (1, 16),
          infer_image_size: int | None = None, infer_attention: str = "cbam",
          channels_last: bool = True, clock: str = "wall", memory: bool = True,
          seed: int = 0) -> dict[str, Any]:
    """Run the standard table (see the module docstring); `rounds` interleaved rounds per
    run after `warmup` untimed ones. Returns a JSON-able dict: `machine`, `settings`,
    `train` (per precision and model: ms, ms_iqr, samples, images_per_s, peak_mem_mb, ratio,
    mem_ratio; `bf16_speedup`) and `infer` (per batch size, precision and model: ms, ms_iqr,
    samples, ratio); ms is the median, ms_iqr its [first, third quartile]."""
    from ..attention import list_attention

    bad = [c for c in compare if c != "timm"]
    if bad:
        raise ValueError(f"compare={bad[0]!r}: allowed timm")
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"precisions={list(precisions)!r}: choose from {', '.join(PRECISIONS)}")
    attentions = list(attentions) if attentions is not None else list_attention()
    unknown = [a for a in [*attentions, infer_attention] if a not in list_attention()]
    if unknown:
        raise ValueError(f"attention={unknown[0]!r}: allowed {', '.join(list_attention())}")
    dev = _check_common("train", rounds, [train_batch, *infer_batches], clock, device,
                        threads)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    amps = {p: resolve_amp(p, dev) for p in precisions}

    train_size = train_image_size or default_image_size(train_arch)
    cases = {}
    for p in precisions:
        for att in [None, *attentions]:
            model = _build(train_arch, att, dev, fmt, seed)
            x, y = _inputs(model, train_batch, train_size, dev, channels_last)
            cases[f"{p}/{att or 'plain'}"] = (model, amps[p], x, y)
    runs = run_cases(cases, "train", warmup=warmup, repeats=rounds, clock=clock, memory=memory)
    train: dict[str, Any] = {"arch": train_arch, "batch_size": train_batch,
                             "image_size": train_size, "models": ["plain", *attentions]}
    for p in precisions:
        train[p] = _with_ratios({k.split("/", 1)[1]: v for k, v in runs.items()
                                 if k.startswith(p + "/")}, "plain")
    if "bf16" in precisions and "fp32" in precisions:
        train["bf16_speedup"] = train["fp32"]["plain"]["ms"] / train["bf16"]["plain"]["ms"]

    infer_size = infer_image_size or default_image_size(infer_arch)
    infer: dict[str, Any] = {"arch": infer_arch, "image_size": infer_size,
                             "attention": infer_attention,
                             "models": ["plain", infer_attention,
                                        *(["timm"] if "timm" in compare else [])]}
    for batch in infer_batches:
        cases = {}
        for p in precisions:
            for name in infer["models"]:
                model = (timm_model(infer_arch, infer_attention, 1000).to(dev, memory_format=fmt)
                         if name == "timm" else
                         _build(infer_arch, None if name == "plain" else name, dev, fmt, seed))
                x, y = _inputs(model, batch, infer_size, dev, channels_last)
                cases[f"{p}/{name}"] = (model, amps[p], x, y)
        runs = run_cases(cases, "infer", warmup=warmup, repeats=rounds, clock=clock)
        infer[f"batch{batch}"] = {p: _with_ratios({k.split("/", 1)[1]: v for k, v in runs.items()
                                                   if k.startswith(p + "/")}, "plain")
                                  for p in precisions}
    settings = {"rounds": rounds, "warmup": warmup, "clock": clock,
                "channels_last": channels_last, "infer_batches": list(infer_batches),
                "precisions": {p: {"dtype": a.dtype, "reason": a.reason} for p, a in amps.items()}}
    return {"machine": machine_info(dev), "settings": settings, "train": train, "infer": infer}


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _spread(r: dict[str, Any]) -> str:
    """"median [q1-q3]" in ms of one run_cases row (old results without a spread: median)."""
    q1, q3 = r.get("ms_iqr") or (None, None)
    return f"{r['ms']:.1f}" + ("" if q1 is None else f" [{q1:.1f}-{q3:.1f}]")


def format_suite(result: dict[str, Any]) -> str:
    """The Markdown tables of a `suite` result."""
    m, s, tr, inf = result["machine"], result["settings"], result["train"], result["infer"]
    flags = ", ".join(m["cpu_bf16_flags"]) or "none (bf16 is emulated)"
    lines = ["# attnres bench --suite", "",
             f"CPU: {m['cpu']}; native bf16 flags: {flags}; device {m['device']}"
             + (f" ({m['gpu']})" if m.get("gpu") else "")
             + f"; torch {m['torch']}; {m['threads']} thread(s); {s['clock']} clock; "
             f"medians of {s['rounds']} interleaved rounds after {s['warmup']} warm-up, "
             f"[q1-q3] their interquartile range; "
             + ("channels_last" if s["channels_last"] else "contiguous") + ".", ""]
    precisions = [p for p in ("bf16", "fp32") if p in tr]
    lines += [f"## {tr['arch']}, {tr['image_size']} px, batch {tr['batch_size']}, one SGD step",
              "", "Ratios to the plain network of the same precision in the same run.", "",
              "| | " + " | ".join(["plain"] + [f"+{a}" for a in tr["models"][1:]]) + " |",
              "|---|" + "---:|" * len(tr["models"])]
    for p in precisions:
        row = tr[p]
        plain = row["plain"]
        lines.append(f"| {p} step time | 1.00 ({plain['ms']:.1f} ms) | "
                     + " | ".join(_fmt(row[a]["ratio"], ".3f") for a in tr["models"][1:]) + " |")
        lines.append(f"| {p} step ms [IQR] | " + " | ".join(
            _spread(row[a]) for a in tr["models"]) + " |")
        lines.append(f"| {p} images/s | " + " | ".join(
            _fmt(row[a]["images_per_s"], ".0f") for a in tr["models"]) + " |")
        if plain["peak_mem_mb"] is not None:
            lines.append(f"| {p} peak memory | 1.00 ({plain['peak_mem_mb']:.1f} MiB) | "
                         + " | ".join(_fmt(row[a]["mem_ratio"], ".3f")
                                      for a in tr["models"][1:]) + " |")
    if "bf16_speedup" in tr:
        lines += ["", f"Plain {tr['arch']} training step, bf16 autocast against fp32: "
                      f"{tr['bf16_speedup']:.2f}x faster."]
    models = inf["models"]
    names = ["plain"] + [("timm " + inf["attention"]) if n == "timm" else f"+{n}"
                         for n in models[1:]]
    lines += ["", f"## {inf['arch']}, {inf['image_size']} px, inference", "",
              "Ratios to the plain network of the same precision and batch in the same run.",
              "", "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for batch in s["infer_batches"]:
        for p in precisions:
            row = inf[f"batch{batch}"][p]
            lines.append(f"| {p}, batch {batch} | {row['plain']['ms']:.1f} ms | "
                         + " | ".join(_fmt(row[n]["ratio"], ".3f") for n in models[1:]) + " |")
            lines.append(f"| {p}, batch {batch}, ms [IQR] | "
                         + " | ".join(_spread(row[n]) for n in models) + " |")
    return "\n".join(lines) + "\n"


def write_suite(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """`suite.json` and `suite.md` in folder `out` (made if missing), written atomically."""
    out = Path(out)
    return (atomic_write_json(out / "suite.json", result),
            atomic_write(out / "suite.md", format_suite(result)))


__all__ = ["PRECISIONS", "format_suite", "suite", "write_suite"]
