"""Accuracy and latency of several runtimes on one data set, and the report as text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from ..data import BatchLoader
from ..utils import median_iqr, time_interleaved, time_interleaved_samples


def _loader(data: Any, split: str, model: nn.Module, batch_size: int,
            limit: int | None = None, seed: int = 0) -> BatchLoader:
    """Normalised, un-augmented batches of `data.<split>` (optionally a seeded subset)."""
    subset = getattr(data, split)
    images, labels = subset.images, subset.labels
    if limit is not None and limit < len(labels):
        pick = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:limit]
        images, labels = images[pick], labels[pick]
    prep = getattr(model, "preprocessing", None) or {}
    if prep.get("source") == "architecture":  # a fresh network's defaults, not its data's
        prep = {}
    return BatchLoader(images, labels, batch_size=batch_size, train=False,
                       mean=prep.get("mean") or data.mean, std=prep.get("std") or data.std,
                       kind=data.kind, image_size=prep.get("image_size") or data.image_size)


def _top1(run: Callable[[torch.Tensor], torch.Tensor], loader: Iterable) -> float:
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((run(x).argmax(1) == y).sum())
            total += len(y)
    return 100.0 * correct / max(total, 1)  # percent, like every accuracy attnres reports


def compare_on_data(runners: dict[str, Callable[[torch.Tensor], torch.Tensor]],
                    loader: Iterable, *, latency_batch: int = 1, repeats: int = 30
                    ) -> dict[str, dict[str, float]]:
    """Top-1 (%) of each runner over `loader` (batches `(B, 3, H, W)`, labels `(B,)`), and
    latency: median ms per call on one batch of `latency_batch` images (and the
    interquartile range of the calls, `latency_ms_iqr`) and images/s on a full loader batch,
    timed interleaved."""
    results = {name: {"top1": _top1(run, loader)} for name, run in runners.items()}
    x_full = next(iter(loader))[0]
    x_one = x_full[:latency_batch].contiguous()
    with torch.no_grad():
        one = time_interleaved_samples({n: (lambda r=r: r(x_one)) for n, r in runners.items()},
                                       warmup=3, repeats=repeats)
        full = time_interleaved({n: (lambda r=r: r(x_full)) for n, r in runners.items()},
                                warmup=1, repeats=max(3, repeats // 5))
    for name in runners:
        median, q1, q3 = median_iqr(one[name])
        results[name]["latency_ms"] = median * 1e3
        results[name]["latency_ms_iqr"] = [q1 * 1e3, q3 * 1e3]
        results[name]["images_per_s"] = len(x_full) / full[name]
    return results


def _with_ratios(report: dict[str, Any]) -> dict[str, Any]:
    """Latency of each runner relative to fp32 PyTorch (below 1 is faster)."""
    compare = report.get("compare")
    if compare and "pytorch-fp32" in compare:
        base = compare["pytorch-fp32"]["latency_ms"]
        for row in compare.values():
            row["latency_ratio"] = row["latency_ms"] / base if base > 0 else math.nan
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text and, with data, a Markdown table."""
    lines = [f"wrote {report['path']} ({report['format']}, "
             f"{report['size_bytes'] / 1e6:.2f} MB)"]
    if "max_abs_diff" in report:
        shapes = ", ".join(f"{k}: {v:.2e}" for k, v in report["diff_by_shape"].items())
        lines.append(f"max abs diff vs PyTorch: {report['max_abs_diff']:.2e} ({shapes})")
    elif report.get("why"):
        lines.append(f"not verified: {report['why']}")
    if "ops" in report:
        lines.append(f"ONNX ops (opset {report['opset']}): {', '.join(report['ops'])}")
    if "compare" in report:
        lines.append(f"validation split, CPU, {report['threads']} thread(s):")
        lines.append("| runtime | top-1 (%) | latency, batch 1 (ms) [IQR] | vs fp32 | images/s |")
        lines.append("|---|---:|---:|---:|---:|")
        for name, row in report["compare"].items():
            q1, q3 = row.get("latency_ms_iqr") or (row["latency_ms"], row["latency_ms"])
            lines.append(f"| {name} | {row['top1']:.2f} | {row['latency_ms']:.2f} "
                         f"[{q1:.2f}-{q3:.2f}] | {row['latency_ratio']:.2f}x | "
                         f"{row['images_per_s']:.0f} |")
    return "\n".join(lines)


__all__ = ["compare_on_data", "format_report"]
