"""Saved models: the weights as safetensors plus the recipe that rebuilds the network.

`save_model(model, "mynet")` writes a folder:

    mynet/model.safetensors   the state dict (every tensor its own copy: no shared storage)
    mynet/model.json          {"format": "attnres-model", "version": 1, "model_info": {...}}

`model_info` is the model's `ModelInfo.to_dict()`: the source network (attnres architecture,
a torchvision ResNet adopted as one, or a timm model name) and its arguments, the
`add_attention` / `insert_attention` edits, the attention options and the preprocessing.
`load_model("mynet")` (also given `mynet/model.safetensors` or `mynet/model.json`) rebuilds
the network from these files alone, with `rebuild_model`, offline, and loads the weights
strictly. `attnres train` writes the same two files into its run folder (the best weights).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import rebuild_model
from .models.info import ModelInfo, _preview
from .models.layout import ensure_model_info
from .utils import atomic_write, atomic_write_json

MODEL_FORMAT = "attnres-model"
MODEL_VERSION = 1
WEIGHTS_NAME, RECIPE_NAME = "model.safetensors", "model.json"


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors sharing storage (tied weights, views): store a copy of each
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def save_model(model: nn.Module, path: str | Path,
               preprocessing: Mapping[str, Any] | None = None) -> Path:
    """Write `model` to the folder `path` as `model.safetensors` + `model.json` (see the
    module doc); returns the folder. Each file is written atomically.

    preprocessing: overrides the model's (e.g. the mean/std of the data it was trained on).
    Raises ValueError when attnres cannot record how to rebuild the network (no known
    architecture) or its metadata is not JSON data.
    """
    import safetensors.torch

    info = ensure_model_info(model)
    if preprocessing is not None:
        info = ModelInfo.from_dict(info.to_dict())
        info.preprocessing = type(info.preprocessing).from_dict(preprocessing)
    if info.library not in ("attnres", "timm") or not info.architecture:
        raise ValueError(f"save_model: cannot record how to rebuild this "
                         f"{type(model).__name__} (library={info.library!r}, architecture="
                         f"{info.architecture!r}); allowed: attnres models, torchvision "
                         f"ResNets, timm models")
    recipe = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "model_info": info.to_dict()}
    folder = Path(path)
    data = safetensors.torch.save(_state_tensors(model), metadata={"format": MODEL_FORMAT})
    atomic_write(folder / WEIGHTS_NAME, data)
    atomic_write_json(folder / RECIPE_NAME, recipe)
    return folder


def model_folder(path: str | Path) -> Path | None:
    """The saved-model folder `path` means (the folder, or the folder of its
    model.safetensors / model.json), or None when `path` is not one."""
    path = Path(path)
    if path.is_file() and path.name in (WEIGHTS_NAME, RECIPE_NAME):
        path = path.parent
    if path.is_dir() and (path / RECIPE_NAME).is_file() and (path / WEIGHTS_NAME).is_file():
        return path
    return None


def read_recipe(folder: str | Path) -> ModelInfo:
    """The `ModelInfo` in `folder/model.json`; ValueError naming the file when it is not
    one that `save_model` wrote."""
    file = Path(folder) / RECIPE_NAME
    try:
        recipe = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a saved-model recipe (invalid JSON: {e})") from None
    if not isinstance(recipe, dict) or recipe.get("format") != MODEL_FORMAT:
        raise ValueError(f"{file}: not a saved-model recipe (format "
                         f"{recipe.get('format') if isinstance(recipe, dict) else None!r}, "
                         f"expected {MODEL_FORMAT!r})")
    if recipe.get("version", 0) > MODEL_VERSION:
        raise ValueError(f"{file}: saved-model version {recipe['version']}; this attnres reads "
                         f"up to {MODEL_VERSION}: upgrade attnres")
    try:
        return ModelInfo.from_dict(recipe.get("model_info") or {})
    except (TypeError, ValueError) as e:
        raise ValueError(f"{file}: bad model_info ({e})") from None


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ValueError naming the file when it is corrupt."""
    import safetensors.torch

    try:
        return safetensors.torch.load(Path(file).read_bytes())
    except Exception as e:  # safetensors raises its own SafetensorError (and others)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{file}: corrupt or truncated safetensors file ({reason})") from None


def load_state_strict(model: nn.Module, state: Mapping[str, torch.Tensor], file: Path) -> None:
    """`model.load_state_dict(state)` with every key and shape checked first: a one-line
    ValueError naming `file` and the first missing, unexpected or mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{what} {len(keys)} ({_preview(keys, 3)})" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)) if keys]
    if problems:
        raise ValueError(f"{file}: weights do not match the rebuilt model: "
                         + "; ".join(problems))
    model.load_state_dict(state)


def load_saved_model(path: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model `save_model` wrote to `path`, in eval mode, with
    `model.preprocessing` set; nothing is downloaded."""
    folder = model_folder(path)
    if folder is None:
        raise FileNotFoundError(f"{str(path)!r} is not a saved model (a folder holding "
                                f"{WEIGHTS_NAME} and {RECIPE_NAME})")
    info = read_recipe(folder)
    state = read_weights(folder / WEIGHTS_NAME)
    try:
        model = rebuild_model(info)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{folder / RECIPE_NAME}: cannot rebuild the model ({e})") from None
    load_state_strict(model, state, folder / WEIGHTS_NAME)
    model.to(map_location)
    model.eval()
    if not hasattr(type(model), "preprocessing"):
        # timm models have no `preprocessing` view of their info: give them the dict that
        # `predict` reads, as attnres' ResNet has
        model.preprocessing = info.preprocessing.to_dict()
    return model


__all__ = ["MODEL_FORMAT", "RECIPE_NAME", "WEIGHTS_NAME", "load_saved_model",
           "load_state_strict", "model_folder", "read_recipe", "read_weights", "save_model"]
