"""Checkpoint files and run folders: saving, safe loading, and rebuilding a trained model.

A run folder `OUT/` (written by `attnres.train`) holds `config.json`, `last.pt`, `best.pt`,
`metrics.csv` (one row per epoch), TensorBoard events and `summary.json`. Evaluation,
export, explain and the ablations read runs through this module, never through the trainer.

Checkpoints are written atomically and read back with `torch.load(weights_only=True)`: a
file holding anything other than tensors and plain data is refused, never executed.
"""

from __future__ import annotations

import csv
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils import atomic_write

CHECKPOINT_FORMAT = 1
# a run folder's checkpoint, in the order they are preferred
RUN_CHECKPOINTS = ("best.pt", "last.pt")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, truncated, unsafe or not ours."""


def _check_zip(tmp: str) -> None:
    # torch.save writes a zip archive; a readable central directory means it is complete
    try:
        with zipfile.ZipFile(tmp) as archive:
            if not archive.namelist():
                raise CheckpointError(f"{tmp}: written checkpoint is empty")
    except zipfile.BadZipFile as e:
        raise CheckpointError(f"{tmp}: written checkpoint is not readable ({e})") from e


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> None:
    """`torch.save(obj, path)` atomically (temp file in the same folder + fsync + rename)."""
    atomic_write(path, lambda f: torch.save(obj, f), check=_check_zip)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint with `torch.load(weights_only=True)`.

    Raises FileNotFoundError when missing, and CheckpointError (a ValueError) when the file
    is truncated or corrupt, or holds objects other than tensors and plain data (a pickle
    that would run code is refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects other than tensors and "
                f"plain data, which could run code (torch.load weights_only=True)") from e
        raise CheckpointError(f"{path}: corrupt or not a checkpoint ({e})") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({reason})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds {type(obj).__name__})")
    return obj


def checkpoint_file(path: str | Path, names: tuple[str, ...] = RUN_CHECKPOINTS) -> Path:
    """The checkpoint file meant by `path`: a file as it is; a run folder's first existing
    file of `names` (its best.pt, else its last.pt). FileNotFoundError when a folder holds
    none of them; whether a file exists is left to `load_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        for name in names:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"run folder {str(path)!r} holds no {' or '.join(names)}")
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its files alone: a checkpoint, a run folder (its
    best.pt, else last.pt) or a folder written by `attnres.save_model` (model.safetensors
    + model.json, see `attnres.model_files`). Nothing is downloaded.

    The network comes from the checkpoint's `model_info` (checkpoints of attnres <= 0.2:
    its `build_args`); the model is returned in eval mode with `model.preprocessing =
    {"mean", "std", "image_size", "classes"}` describing the inputs it expects, `(B, 3, S,
    S)` normalised.
    """
    from .model_files import load_saved_model, load_state_strict, model_folder
    from .models import build_model, rebuild_model

    folder = model_folder(path)
    if folder is not None and not any((folder / name).is_file() for name in RUN_CHECKPOINTS):
        return load_saved_model(folder, map_location=map_location)
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file, map_location=map_location)
    if "model" not in ckpt or not ("build_args" in ckpt or "model_info" in ckpt):
        raise CheckpointError(f"{file}: not an attnres training checkpoint (no model/build_args"
                              f"); load plain state dicts with attnres.load_pretrained")
    if ckpt.get("model_info"):
        model = rebuild_model(ckpt["model_info"])  # never downloads
    else:
        build_args = dict(ckpt["build_args"])
        build_args["pretrained"] = None  # the checkpoint holds the weights; never download
        model = build_model(build_args.pop("arch"), **build_args)
    load_state_strict(model, ckpt["model"], file)
    model.to(map_location)
    model.eval()
    model.preprocessing = dict(ckpt.get("preprocessing", {}))
    return model


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The training options (`TrainConfig` as a dict) stored in a checkpoint or a run
    folder's checkpoint; {} for a checkpoint that stores none."""
    return dict(load_checkpoint(checkpoint_file(path)).get("config") or {})


def read_summary(run: str | Path) -> dict[str, Any] | None:
    """A run folder's `summary.json`, or None when it is missing or unreadable (a run that
    never finished an epoch, or one killed before its first summary)."""
    try:
        return json.loads((Path(run) / "summary.json").read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    """A run folder's `metrics.csv` as one dict per epoch, numbers as floats (`epoch` and
    `train_images` as ints); [] when there is none yet."""
    try:
        text = (Path(run) / "metrics.csv").read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    rows = []
    for row in csv.DictReader(text.splitlines()):
        parsed: dict[str, Any] = {}
        for key, value in row.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                parsed[key] = value
                continue
            parsed[key] = int(number) if key in ("epoch", "train_images") else number
        rows.append(parsed)
    return rows


__all__ = ["CHECKPOINT_FORMAT", "RUN_CHECKPOINTS", "CheckpointError", "checkpoint_file",
           "load_checkpoint", "load_model", "read_checkpoint_config", "read_metrics",
           "read_summary", "save_checkpoint"]
