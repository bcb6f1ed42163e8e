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
import math
import pickle
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .utils import atomic_write

CHECKPOINT_FORMAT = 1
# a run folder's checkpoint, in the order they are preferred
RUN_CHECKPOINTS = ("best.pt", "last.pt")
# what a checkpoint of `attnres train` holds besides the model, and `--resume` needs
TRAINING_KEYS = {"optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
                 "rng": dict, "config": dict, "metrics": list}
# what reading a damaged file can raise inside torch.load (zip, pickle and storage layers)
_READ_ERRORS = (RuntimeError, EOFError, KeyError, ValueError, OSError, zipfile.BadZipFile,
                IndexError, TypeError, AttributeError, OverflowError, MemoryError,
                struct.error)


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
    except _READ_ERRORS as e:
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


def nonfinite_names(tensors: Iterable[tuple[str, Any]]) -> list[str]:
    """The names of the floating-point tensors that hold NaN or infinity (one device sync)."""
    named = [(name, t) for name, t in tensors
             if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
             and t.device.type != "meta"]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all().to(named[0][1].device) for _, t in named])
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def _listed(names: list[str], limit: int = 3) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _check_preprocessing(file: Path, prep: Any) -> None:
    if not isinstance(prep, dict):
        raise CheckpointError(f"{file}: 'preprocessing' is a {type(prep).__name__}, not a dict")
    for key in ("mean", "std"):
        value = prep.get(key)
        if value is not None and not (
                isinstance(value, (list, tuple)) and len(value) == 3 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    and (key == "mean" or v > 0) for v in value)):
            raise CheckpointError(f"{file}: preprocessing {key}={value!r} is not 3 finite "
                                  f"numbers{' > 0' if key == 'std' else ''}")
    size = prep.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise CheckpointError(f"{file}: preprocessing image_size={size!r} is not a positive "
                              f"integer")
    classes = prep.get("classes")
    if classes is not None and not (isinstance(classes, (list, tuple))
                                    and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"{file}: preprocessing classes is not a list of names")


def _check_structure(file: Path, ckpt: dict, training: bool) -> None:
    """The keys and types a checkpoint needs, before anything is built from it."""
    weights, build_args = ckpt.get("model"), ckpt.get("build_args")
    info = ckpt.get("model_info")
    if info is not None and not isinstance(info, dict):
        raise CheckpointError(f"{file}: its model_info is a {type(info).__name__}, not a dict")
    if not isinstance(weights, dict) or not (isinstance(build_args, dict)
                                             or isinstance(info, dict)):
        have = ", ".join(sorted(map(str, ckpt))[:6]) or "nothing"
        raise CheckpointError(f"{file}: not an attnres training checkpoint: it needs a 'model' "
                              f"state dict and 'model_info' or 'build_args' (it holds {have}); "
                              f"load plain state dicts with attnres.load_pretrained")
    if isinstance(info, dict) and not isinstance(info.get("architecture"), str):
        raise CheckpointError(f"{file}: its model_info names no architecture")
    if info is None and not isinstance(build_args.get("arch"), str):
        raise CheckpointError(f"{file}: its build_args name no architecture ('arch')")
    bad = [str(k) for k, v in weights.items()
           if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{file}: its model weights hold entries that are not tensors: "
                              f"{_listed(bad)}")
    if training:
        missing = [key for key in TRAINING_KEYS if key not in ckpt]
        if missing:
            raise CheckpointError(f"{file}: not a checkpoint `attnres train` can continue: it "
                                  f"lacks {', '.join(missing)}; --resume needs the last.pt "
                                  f"of a run")
        wrong = [f"{key} ({type(ckpt[key]).__name__})" for key, kind in TRAINING_KEYS.items()
                 if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool)]
        if wrong:
            raise CheckpointError(f"{file}: training state of the wrong type: "
                                  f"{', '.join(wrong)}")
    if "config" in ckpt and ckpt["config"] is not None and not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{file}: 'config' is a {type(ckpt['config']).__name__}, not a "
                              f"dict")
    if "preprocessing" in ckpt:
        _check_preprocessing(file, ckpt["preprocessing"])


def _describes(ckpt: dict) -> str:
    """The network a checkpoint describes, for messages."""
    info = ckpt.get("model_info")
    return str(info["architecture"]) if isinstance(info, dict) else str(ckpt["build_args"]["arch"])


def _build(file: Path, ckpt: dict, device: str | torch.device) -> nn.Module:
    """The model the checkpoint's `model_info` (attnres <= 0.2: `build_args`) describes, on
    `device` (weights not loaded, never downloaded)."""
    from .models import build_model, rebuild_model

    try:
        with torch.device(device):
            if isinstance(ckpt.get("model_info"), dict):
                return rebuild_model(ckpt["model_info"])
            args = dict(ckpt["build_args"])
            args["pretrained"] = None  # the checkpoint holds the weights; never download
            return build_model(args.pop("arch"), **args)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{file}: its model description does not build a model "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                              ) from None


def check_checkpoint(ckpt: dict[str, Any], file: str | Path, *, training: bool = False,
                     device: str | torch.device = "meta") -> nn.Module:
    """Check that `ckpt` (read from `file`) is usable before anything uses it: its keys and
    their types (with `training`, all that `--resume` needs too), then its weights against
    the model its `build_args` describe (missing, unexpected or mis-shaped keys, weights
    that are not finite). Raises CheckpointError naming the file and the first bad keys;
    returns that model, built on `device` ("meta": no memory), weights not loaded."""
    file = Path(file)
    _check_structure(file, ckpt, training)
    model = _build(file, ckpt, device)
    expected, weights = model.state_dict(), ckpt["model"]
    problems = []
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    shapes = [f"{k} {tuple(weights[k].shape)} instead of {tuple(v.shape)}"
              for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    kinds = [k for k, v in expected.items() if k in weights and not weights[k].is_complex()
             and weights[k].is_floating_point() != v.is_floating_point()]
    for label, names in (("missing", missing), ("unexpected", unexpected),
                         ("wrong shape", shapes), ("wrong dtype", kinds)):
        if names:
            problems.append(f"{label}: {_listed(names)}")
    if problems:
        raise CheckpointError(f"{file}: its weights do not fit the {_describes(ckpt)} it "
                              f"describes ({'; '.join(problems)})")
    bad = nonfinite_names(weights.items())
    if bad:
        raise CheckpointError(f"{file}: its weights are not finite (NaN or inf) in "
                              f"{_listed(bad)}")
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a trained model from its files alone: a checkpoint, a run folder (its
    best.pt, else last.pt) or a folder written by `attnres.save_model` (model.safetensors
    + model.json, see `attnres.model_files`). Nothing is downloaded.

    The network comes from the checkpoint's `model_info` (checkpoints of attnres <= 0.2:
    its `build_args`), or from a folder written by `attnres.save_model`; the model is
    returned in eval mode with `model.preprocessing = {"mean", "std", "image_size",
    "classes"}` describing the inputs it expects, `(B, 3, S, S)` normalised. The checkpoint
    is checked first (`check_checkpoint`): a damaged one raises CheckpointError naming the
    file and what is wrong with it.
    """
    from .model_files import load_saved_model, model_folder

    folder = model_folder(path)
    if folder is not None and not any((folder / name).is_file() for name in RUN_CHECKPOINTS):
        return load_saved_model(folder, map_location=map_location)
    file = checkpoint_file(path)
    ckpt = load_checkpoint(file, map_location=map_location)
    model = check_checkpoint(ckpt, file, device="cpu")
    model.load_state_dict(ckpt["model"])
    model.to(map_location)
    model.eval()
    model.preprocessing = dict(ckpt.get("preprocessing", {}))
    return model


def read_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The training options (`TrainConfig` as a dict) stored in a checkpoint or a run
    folder's checkpoint; {} for a checkpoint that stores none."""
    file = checkpoint_file(path)
    config = load_checkpoint(file).get("config") or {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{file}: 'config' is a {type(config).__name__}, not a dict")
    return dict(config)


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


__all__ = ["CHECKPOINT_FORMAT", "RUN_CHECKPOINTS", "TRAINING_KEYS", "CheckpointError",
           "check_checkpoint", "checkpoint_file", "load_checkpoint", "load_model",
           "nonfinite_names", "read_checkpoint_config", "read_metrics",
           "read_summary", "save_checkpoint"]
