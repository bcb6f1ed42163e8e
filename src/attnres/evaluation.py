"""Evaluate a classifier on one split: top-1/top-5, mean loss, per-class accuracy, confusion.

`evaluate(model, data)` measures a model in memory; `evaluate_checkpoint(run)` rebuilds a
trained model from its checkpoint (`attnres.checkpoint`) and evaluates it with the
checkpoint's own preprocessing, writing `eval.json` and `confusion.png`.

Accuracies are percentages (0-100) everywhere, as in `summary.json` and on the command
line: top1, top5 and per_class. `eval.json` says so (`"accuracy_unit": "percent"`); files
written before that held fractions, and `read_eval_json` converts them.
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import checkpoint_file, load_checkpoint, load_model, read_checkpoint_config
from .data import (NAMED_DATASETS, BatchLoader, ImageData, ImageSet, StreamLoader, load_dataset,
                   open_stream)
from .precision import AmpChoice, autocast_context, resolve_amp
from .training.validation import TTA_MODES, tta_logits
from .utils import atomic_write, atomic_write_json, resolve_device


def _accumulate(logits: torch.Tensor, labels: torch.Tensor, k: int, confusion: torch.Tensor
                ) -> tuple[float, int, int]:
    """Add one batch to `confusion` `(K, K)` [true, predicted]; return (loss sum, top1, topk)."""
    loss = F.cross_entropy(logits.float(), labels, reduction="sum").item()
    topk = logits.topk(k, dim=1).indices  # (B, k)
    hits = topk == labels[:, None]
    pred = topk[:, 0]
    num_classes = confusion.shape[0]
    confusion += torch.bincount(labels * num_classes + pred,
                                minlength=num_classes * num_classes).view_as(confusion).cpu()
    return loss, int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def metrics_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes: Sequence[str]
                        ) -> dict:
    """The metrics of `evaluate` (accuracies in %) for given logits `(N, K)` and labels
    `(N,)`."""
    confusion = torch.zeros(len(classes), len(classes), dtype=torch.int64)
    k = min(5, len(classes))
    loss, top1, topk = _accumulate(logits, labels, k, confusion)
    return _summarise(loss, top1, topk, confusion, classes, k)


def _summarise(loss: float, top1: int, topk: int, confusion: torch.Tensor,
               classes: Sequence[str], k: int) -> dict:
    n = int(confusion.sum())
    if n == 0:
        raise ValueError("cannot evaluate on an empty split")
    per_class_total = confusion.sum(dim=1)
    per_class = {name: (100.0 * float(confusion[i, i]) / int(per_class_total[i])
                        if int(per_class_total[i]) else None)  # None: class absent from split
                 for i, name in enumerate(classes)}
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * topk / n, "topk": k, "loss": loss / n,
            "per_class": per_class, "confusion": confusion.tolist(), "n": n}


@torch.inference_mode()
def evaluate(model: nn.Module, data: ImageData, *, split: str = "val", batch_size: int = 256,
             device: str | torch.device = "cpu", amp: str | bool = "auto",
             tta: str = "none") -> dict:
    """Top-1, top-5 (top-k capped at the class count), mean cross-entropy, per-class accuracy
    and confusion matrix (rows: true class, columns: predicted) of `model` on `data.<split>`
    ("all": the training and validation images together).

    The split is normalised with `data.mean` / `data.std` (set these to the checkpoint's
    statistics when evaluating a trained model on new data). The model's train/eval mode is
    restored afterwards. `amp`: the precision ("auto", "bf16", "fp16", "fp32";
    `attnres.precision.resolve_amp`). Returns {top1, top5, topk, loss, per_class, confusion,
    n, amp}; top1, top5 and per_class are percentages (0-100, like summary.json), loss is
    the mean cross-entropy, n the number of images, amp the precision that ran. `tta`
    "flip" scores the mean logits of each image and its mirror image (as `attnres train
    --tta flip` validates) and adds `top1_no_tta`.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    _check_tta(tta)
    images = getattr(data, split) if split != "all" else ImageSet(
        torch.cat([data.train.images, data.val.images]),
        torch.cat([data.train.labels, data.val.labels]))
    loader = BatchLoader(images.images, images.labels, batch_size=batch_size, train=False,
                         mean=data.mean, std=data.std, kind=data.kind,
                         image_size=data.image_size)
    device = resolve_device(device)
    return _evaluate_batches(model, loader, data.classes, device, resolve_amp(amp, device),
                             tta)


SPLITS = ("val", "train", "all")


def _check_tta(tta: str) -> None:
    if tta not in TTA_MODES:
        raise ValueError(f"tta {tta!r} is not one of: {', '.join(TTA_MODES)}")


@torch.inference_mode()
def _evaluate_batches(model: nn.Module, loader: Any, classes: Sequence[str],
                      device: torch.device, amp: AmpChoice, tta: str = "none") -> dict:
    """The metrics of `evaluate` over the normalised batches `(B, 3, S, S)`, `(B,)` of
    `loader` (a `BatchLoader` or a `StreamLoader`), under `amp`'s autocast; the batches go
    in the model's memory format."""
    num_classes = len(classes)
    k = min(5, num_classes)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum, top1, topk, plain1 = 0.0, 0, 0, 0
    was_training = model.training
    model.eval()
    try:
        layout = _memory_format(model)
        for x, y in loader:
            with autocast_context(amp, device):
                logits, plain = tta_logits(
                    model, x.to(device, non_blocking=True).contiguous(memory_format=layout), tta)
            if logits.shape[1] != num_classes:
                raise ValueError(f"model gives {logits.shape[1]} outputs but the data has "
                                 f"{num_classes} classes")
            y = y.to(device)
            loss, hits1, hitsk = _accumulate(logits, y, k, confusion)
            loss_sum, top1, topk = loss_sum + loss, top1 + hits1, topk + hitsk
            plain1 += int((plain.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    result = {**_summarise(loss_sum, top1, topk, confusion, classes, k), "amp": amp.dtype,
              "tta": tta}
    if tta != "none":
        result["top1_no_tta"] = 100.0 * plain1 / max(result["n"], 1)
    return result


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last if the model's first 4-d weight is (as `attnres train` leaves it under
    bf16 autocast), else contiguous."""
    for p in model.parameters():
        if p.dim() == 4:
            return torch.channels_last if p.is_contiguous(memory_format=torch.channels_last) \
                and not p.is_contiguous() else torch.contiguous_format
    return torch.contiguous_format


def save_confusion_png(confusion: Sequence[Sequence[int]], classes: Sequence[str],
                       path: str | Path) -> Path:
    """Draw the confusion matrix (row-normalised colours, counts written in) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    counts = torch.as_tensor(confusion, dtype=torch.float64)
    k = len(classes)
    if counts.shape != (k, k):
        raise ValueError(f"confusion shape {tuple(counts.shape)} does not match {k} classes")
    rows = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    side = min(2 + 0.45 * k, 30)
    fig, ax = plt.subplots(figsize=(side + 1.5, side))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    if k <= 40:  # beyond this labels and counts are unreadable anyway
        ax.set_xticks(range(k), labels=list(classes), rotation=90)
        ax.set_yticks(range(k), labels=list(classes))
        if k <= 20:
            for i in range(k):
                for j in range(k):
                    ax.text(j, i, int(counts[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if rows[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    fig.tight_layout()
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=100)
    finally:
        plt.close(fig)
    return atomic_write(path, buffer.getvalue())


def _checkpoint_data(file: Path, config: dict[str, Any], prep: dict[str, Any],
                     data: str | None, split: str | None, val_split: float | None,
                     split_seed: int | None, cache_dir: str | Path | None,
                     loader: str | None) -> tuple[str, Any, str]:
    """`(spec, dataset, split)` for `evaluate_checkpoint`: the data (default: the run's own),
    normalised with the checkpoint's statistics, and the split to score."""
    same_data = data is None or data == config.get("data")
    spec = data if data is not None else config.get("data")
    if not spec:
        raise ValueError(f"checkpoint {str(file)!r} does not name its data; pass --data")
    if val_split is None and same_data:
        val_split = config.get("val_split")
    if split_seed is None:
        split_seed = int(config.get("split_seed", 0)) if same_data else 0
    if cache_dir is None:
        cache_dir = config.get("cache_dir")
    kind = loader if loader is not None else config.get("loader", "memory")
    if kind not in ("memory", "stream", "auto"):
        raise ValueError(f"loader {kind!r} is not one of: memory, stream")
    if kind != "stream" or str(spec).lower() in NAMED_DATASETS:
        dataset = load_dataset(str(spec), val_split=val_split, seed=split_seed,
                               image_size=int(prep["image_size"]), cache_dir=cache_dir)
    else:
        dataset = open_stream(str(spec), val_split=val_split, seed=split_seed,
                              image_size=int(prep["image_size"]), cache_dir=cache_dir,
                              mean=tuple(prep["mean"]), std=tuple(prep["std"]))
    classes = list(prep.get("classes") or dataset.classes)
    if classes != dataset.classes:
        raise ValueError(f"data {spec!r} has classes {dataset.classes[:10]} but the model was "
                         f"trained on {classes[:10]}")
    dataset = dataclasses.replace(dataset, mean=tuple(prep["mean"]), std=tuple(prep["std"]))
    if split is None:
        own_val = same_data or val_split is not None or (dataset.info or {}).get("val_given")
        split = "val" if own_val else "all"
    return str(spec), dataset, split


def evaluate_checkpoint(checkpoint: str | Path, data: str | None = None, *,
                        out: str | Path | None = None, split: str | None = None,
                        val_split: float | None = None, split_seed: int | None = None,
                        batch_size: int = 256, device: str | torch.device = "cpu",
                        cache_dir: str | Path | None = None, loader: str | None = None,
                        workers: int | None = None, amp: str | bool = "auto",
                        tta: str | None = None) -> dict[str, Any]:
    """Evaluate a training checkpoint (file or run folder) and write `eval.json` +
    `confusion.png` to `out` (default: `<checkpoint folder>/eval`).

    The data defaults to the checkpoint's own (`config.data`, its validation split and split
    seed). `split` None: "val" of the run's own data, of data with its own validation images
    (root/val/, a test split) or with `val_split` given; else "all" (new data: score every
    image, not a random tenth). Images are normalised with the checkpoint's mean/std and
    resized to its image size, never with statistics of the new data. `loader` ("memory" or
    "stream"; default: the one the run trained with) says whether the data is decoded into
    memory or streamed (validation transforms of `attnres.data.stream`, `workers` DataLoader
    workers, default the run's). `amp` as in `evaluate`: "auto" is bf16 on a CPU with
    native bf16, in the channels_last layout `attnres train` uses there. `tta` as in
    `evaluate`; None: the run's own (`TrainConfig.tta`: how its validation top-1 was
    measured). Returns the metrics plus "checkpoint", "data", "split", "amp", "amp_reason"
    and "files".
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    device = resolve_device(device)
    file = checkpoint_file(checkpoint)  # a run folder: its best checkpoint, else its last
    model = load_model(file, map_location=device)  # checks the checkpoint first
    choice = resolve_amp(amp, device)
    if choice.enabled:  # oneDNN's bf16 convolutions are NHWC, as in training
        model.to(memory_format=torch.channels_last)
    config = read_checkpoint_config(file)
    tta = tta if tta is not None else str(config.get("tta", "none"))
    _check_tta(tta)
    prep = dict(getattr(model, "preprocessing", {}) or {})
    if not {"mean", "std", "image_size"} <= set(prep):
        raise ValueError(f"checkpoint {str(file)!r} holds no preprocessing (mean, std, "
                         f"image_size); it was not written by attnres train")
    spec, dataset, split = _checkpoint_data(file, config, prep, data, split, val_split,
                                            split_seed, cache_dir, loader)
    if split == "all" and not isinstance(dataset, ImageData):
        raise ValueError(f"split 'all' of {spec!r} needs the memory loader (--data-loader "
                         f"memory), or score --split train and --split val one at a time")
    if isinstance(dataset, ImageData):
        result = evaluate(model, dataset, split=split, batch_size=batch_size, device=device,
                          amp=choice.dtype, tta=tta)
    else:
        batches = StreamLoader(getattr(dataset, split), batch_size=batch_size, train=False,
                               mean=dataset.mean, std=dataset.std, kind=dataset.kind,
                               image_size=dataset.image_size, persistent_workers=False,
                               num_workers=int(config.get("workers", 0) if workers is None
                                               else workers))
        result = _evaluate_batches(model, batches, dataset.classes, device, choice, tta)
    out_dir = Path(out) if out is not None else file.parent / "eval"
    json_path, png_path = out_dir / "eval.json", out_dir / "confusion.png"
    result.update(accuracy_unit="percent", checkpoint=str(file), data=str(spec), split=split,
                  loader="memory" if isinstance(dataset, ImageData) else "stream",
                  amp_reason=choice.reason,
                  files={"json": str(json_path), "confusion": str(png_path)})
    save_confusion_png(result["confusion"], dataset.classes, png_path)
    atomic_write_json(json_path, result)
    return result


def read_eval_json(path: str | Path) -> dict[str, Any]:
    """An `eval.json`, accuracies in percent: a file written before they were (no
    `accuracy_unit`, fractions) is converted."""
    result = json.loads(Path(path).read_text(encoding="utf-8"))
    if result.get("accuracy_unit") != "percent":
        for key in ("top1", "top5"):
            if result.get(key) is not None:
                result[key] = 100.0 * result[key]
        result["per_class"] = {name: None if acc is None else 100.0 * acc
                               for name, acc in (result.get("per_class") or {}).items()}
        result["accuracy_unit"] = "percent"
    return result


def format_table(result: dict) -> str:
    """A short text table: overall metrics, then per-class accuracy (all in %)."""
    lines = [f"{'split':<12}{result.get('split', '?')} ({result['n']} images)",
             f"{'top-1':<12}{result['top1']:.2f}%"
             + (f" ({result['tta']} TTA; {result['top1_no_tta']:.2f}% without)"
                if result.get("top1_no_tta") is not None else ""),
             f"{'top-' + str(result['topk']):<12}{result['top5']:.2f}%",
             f"{'loss':<12}{result['loss']:.4f}", "", f"{'class':<20}accuracy"]
    for name, acc in result["per_class"].items():
        lines.append(f"{name[:19]:<20}{'-' if acc is None else f'{acc:.1f}%'}")
    return "\n".join(lines)


__all__ = ["evaluate", "evaluate_checkpoint", "format_table", "metrics_from_logits",
           "read_eval_json", "save_confusion_png"]
