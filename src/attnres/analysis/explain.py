"""Where do trained models look? Grad-CAM and spatial attention maps, side by side.

`explain(checkpoints, images)` runs every image through every model and writes, under
`out`:

- `grid.png`: rows = images, columns = the image, then per model its Grad-CAM overlay
  (and, for models with an attention module that has spatial gates, that module's
  attention map), each title giving the predicted class and its probability;
- one PNG per image and model (`<image>__<model>__cam.png`, `..._attn.png`);
- `explain.json`: the numbers (predicted class, probability, CAM and attention statistics).

Grad-CAM comes from the maintained `grad-cam` package (`pytorch_grad_cam.GradCAM`), for
the predicted class, on the output of `layer` (default: the last stage). Its maps are
min-max scaled to [0, 1] per image and have the model's input size.

Attention maps `(B, 1, h, w)` reduce the outputs of a module's spatial, channel+spatial,
row and column gates (as the attention registry names them), captured with forward hooks in
the same forward pass, as `attention_maps.attention_map` describes; for a CBAM this is its
spatial gate's raw sigmoid output. Overlays are min-max scaled for display (titles give
the raw range).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..attention import attention_spec, closest
from ..precision import autocast_context, resolve_amp
from ..utils import atomic_write
from .attention_maps import attention_map, spatial_gates
from .explain_plot import (DISPLAY_SIZE, cam_title, center_square, draw_grid, gate_title,
                           overlay, resize_map, save_png)

# Photographs that ship with scikit-image, so `attnres explain` runs offline.
SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee", "rocket")
# Used for models without `preprocessing` (plain modules, not loaded by `load_model`).
DEFAULT_PREPROCESSING = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                         "image_size": 224, "classes": None}


# -- images -------------------------------------------------------------------------------
def sample_images() -> list[tuple[str, np.ndarray]]:
    """scikit-image's sample photographs as `(name, (H, W, 3) uint8 RGB)`."""
    import skimage.data

    return [(name, getattr(skimage.data, name)()) for name in SAMPLE_IMAGES]


def dataset_images(spec: str, num_images: int = 4) -> list[tuple[str, np.ndarray]]:
    """Validation images of a data set (`attnres.load_dataset(spec)`), one per class in turn,
    named `<true class>-val<index>`, as `(H, W, 3)` uint8 RGB."""
    from ..data import load_dataset

    if not isinstance(num_images, int) or num_images < 1:
        raise ValueError(f"num_images={num_images!r}: must be a positive integer")
    data = load_dataset(spec)
    labels = data.val.labels.tolist()
    queues = [[i for i, y in enumerate(labels) if y == c] for c in range(data.num_classes)]
    picked: list[int] = []
    while len(picked) < min(num_images, len(labels)):
        for queue in queues:
            if queue and len(picked) < num_images:
                picked.append(queue.pop(0))
    return [(f"{data.classes[labels[i]]}-val{i}",
             data.val.images[i].permute(1, 2, 0).contiguous().numpy()) for i in picked]


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as `(H, W, 3)` uint8 RGB."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {str(path)!r} not found")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except OSError as e:
        raise ValueError(f"image {str(path)!r} could not be read as an image: {e}") from None


def _named_images(images: Sequence[Any] | None, data: str | None, num_images: int,
                  labels: Sequence[str | None] | None
                  ) -> list[tuple[str, np.ndarray, str | None]]:
    """`(name, (H, W, 3) uint8, true class or None)` per image to explain."""
    if data is not None:
        if images is not None or labels is not None:
            raise ValueError("give images (and labels) or data, not both")
        # dataset_images names them <true class>-val<index>
        return [(name, image, name.rsplit("-val", 1)[0])
                for name, image in dataset_images(data, num_images)]
    named = _given_images(images)
    if labels is not None and len(labels) != len(named):
        raise ValueError(f"labels: {len(labels)} given for {len(named)} images; give one "
                         f"per image (None where unknown)")
    return [(name, image, None if labels is None or labels[i] is None else str(labels[i]))
            for i, (name, image) in enumerate(named)]


def _given_images(images: Sequence[Any] | None) -> list[tuple[str, np.ndarray]]:
    if images is None:
        return sample_images()
    if not images:
        raise ValueError("images=[]: give at least one image path (or None for the samples)")
    named = []
    for i, item in enumerate(images):
        if isinstance(item, np.ndarray):
            if item.ndim != 3 or item.shape[2] != 3 or item.dtype != np.uint8:
                raise ValueError(f"image {i}: arrays must be (H, W, 3) uint8 RGB, got "
                                 f"{item.shape} {item.dtype}")
            named.append((f"image{i}", item))
        else:
            named.append((Path(item).stem, read_image(item)))
    return _unique(named)


def _unique(named: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Suffix repeated names with -2, -3, ... so output files do not overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for name, value in named:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}-{seen[name]}", value))
    return out


# -- models -------------------------------------------------------------------------------
def _named_models(checkpoints: Sequence[Any], device: torch.device
                  ) -> list[tuple[str, str | None, nn.Module]]:
    """`(label, checkpoint path or None, model)`; paths are loaded with `load_model`."""
    if not checkpoints:
        raise ValueError("checkpoints=[]: give at least one checkpoint")
    models = []
    for i, item in enumerate(checkpoints):
        if isinstance(item, nn.Module):
            models.append((f"model{i}", None, item))
            continue
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {str(path)!r} not found")
        from ..checkpoint import load_model

        # `runs/cbam/best.pt` -> "cbam/best": the run folder tells models apart
        if path.is_dir():
            label = path.resolve().name
        else:
            label = f"{path.parent.name}/{path.stem}" if path.parent.name else path.stem
        models.append((label, str(path), load_model(path, map_location="cpu")))
    named = _unique([(label, (ckpt, model)) for label, ckpt, model in models])
    return [(label, ckpt, model.to(device).eval()) for label, (ckpt, model) in named]


def last_stage(model: nn.Module) -> str:
    """Name of the model's last stage (`layer4` on ImageNet ResNets, `layer3` on CIFAR's)."""
    names = getattr(model, "stage_names", None)
    if names:
        return names[-1]
    stages = sorted((n for n, _ in model.named_children() if n.startswith("layer")
                     and n[5:].isdigit()), key=lambda n: int(n[5:]))
    if not stages:
        raise ValueError("the model has no layerN stages: pass layer='<module name>'")
    return stages[-1]


def resolve_layer(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    """`(name, module)` of the Grad-CAM target layer; None means the last stage."""
    name = layer or last_stage(model)
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        candidates = [n for n, m in model.named_children()]
        raise ValueError(f"layer={name!r} is not a module of this model"
                         f"{closest(name, [n for n in modules if n])}; top-level modules: "
                         f"{', '.join(candidates)}")
    return name, modules[name]


def spatial_attention_module(model: nn.Module, layer: str,
                             attention_module: str | None) -> str | None:
    """Name of the attention module whose map is shown: `attention_module` if given, else
    the last module with spatial gates inside `layer` (None when there is none)."""
    with_gate = list(spatial_gates(model))
    if attention_module is not None:
        if attention_module not in with_gate:
            raise ValueError(f"attention_module={attention_module!r} has no spatial gate"
                             f"{closest(attention_module, with_gate)}; modules with one: "
                             f"{', '.join(with_gate) or 'none'}")
        return attention_module
    inside = [n for n in with_gate if n.startswith(layer + ".")]
    return inside[-1] if inside else None


def _predict(model: nn.Module, x: torch.Tensor, attention_module: str | None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Class probabilities `(B, K)` for `x` `(B, 3, H, W)` and, when `attention_module` is
    given, its attention map `(B, 1, h, w)` (`attention_map`) from the same forward pass
    (on CPU)."""
    captured: dict[int, torch.Tensor] = {}
    maps: list[torch.Tensor] = []
    handles = []
    if attention_module is not None:
        gates = [gate for _, gate in spatial_gates(model)[attention_module]]
        for i, gate in enumerate(gates):  # a gate called twice keeps its first output
            handles.append(gate.register_forward_hook(
                lambda m, a, o, i=i: captured.setdefault(i, o.detach().float())))

        def combine(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            if not maps and len(captured) == len(gates):
                maps.append(attention_map(list(captured.values()), output.shape).cpu().clone())

        handles.append(model.get_submodule(attention_module).register_forward_hook(combine))
    try:
        with torch.no_grad():
            probs = torch.softmax(model(x).float(), dim=1).cpu()
    finally:
        for handle in handles:
            handle.remove()
    return probs, (maps[0] if maps else None)


def grad_cam(model: nn.Module, target_layer: nn.Module, x: torch.Tensor,
             class_indices: Sequence[int]) -> np.ndarray:
    """Grad-CAM maps `(B, H, W)` float32 in [0, 1] for input `x` `(B, 3, H, W)`, one per
    image for its class in `class_indices`, from the `grad-cam` package. Under autocast the
    target layer's output (and so its gradient) is taken in fp32: the package reads both
    through numpy, which has no bf16."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in class_indices]
    # registered before GradCAM's own hook, so that one sees the fp32 tensor
    to_fp32 = target_layer.register_forward_hook(lambda m, a, out: out.float())
    try:
        with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer]) as cam:
            maps = cam(input_tensor=x.clone().requires_grad_(True), targets=targets)
    finally:
        to_fp32.remove()
    return np.clip(maps, 0.0, 1.0).astype(np.float32)


def map_stats(values: np.ndarray) -> dict[str, Any]:
    """Numbers describing a 2-D map in [0, 1]: mean, max, the area above half its maximum,
    its centre of mass `(y, x)` in [0, 1] image coordinates, and normalised entropy."""
    values = np.asarray(values, dtype=np.float64)
    total = values.sum()
    h, w = values.shape
    if total > 0:
        p = values / total
        ys, xs = np.mgrid[0:h, 0:w]
        centre = [float((p * (ys + 0.5)).sum() / h), float((p * (xs + 0.5)).sum() / w)]
        nz = p[p > 0]
        entropy = float(-(nz * np.log(nz)).sum() / math.log(h * w)) if h * w > 1 else None
    else:
        centre, entropy = None, None
    peak = values.max()
    return {"mean": float(values.mean()), "min": float(values.min()), "max": float(peak),
            "area_above_half_max": float((values > 0.5 * peak).mean()) if peak > 0 else 0.0,
            "centre_yx": centre, "entropy": entropy}


# -- the whole thing ----------------------------------------------------------------------
def explain(checkpoints: Sequence[str | os.PathLike | nn.Module], images: Sequence[Any] | None
            = None, layer: str | None = None, attention_module: str | None = None, *,
            out: str | os.PathLike = "explain", image_size: int | None = None,
            data: str | None = None, num_images: int = 4,
            labels: Sequence[str | None] | None = None,
            device: str | torch.device | None = None,
            amp: str | bool = "auto") -> dict[str, Any]:
    """Grad-CAM (and spatial attention maps) of every image under every model.

    Args:
        checkpoints: checkpoint files written by `attnres train` (loaded with
            `attnres.load_model`) or models (`nn.Module`, optionally carrying
            `preprocessing`; ImageNet mean/std and 224 px otherwise).
        images: image files (or `(H, W, 3)` uint8 RGB arrays); None: scikit-image's sample
            photographs (chelsea, astronaut, coffee, rocket).
        layer: Grad-CAM target module name; None: each model's last stage (layer4 on
            ImageNet ResNets, layer3 on the CIFAR ones).
        attention_module: attention module whose map is shown (one with spatial gates:
            `attention_maps.spatial_attention_names()`); None: the last such module inside `layer`
            (models without one get no attention column).
        out: output folder (created).
        image_size: model input size; None: each model's `preprocessing["image_size"]`.
        data, num_images: instead of `images`, the first `num_images` validation images of
            this data set (a `load_dataset` spec such as "digits"), one class after another;
            their true classes are known.
        labels: the true class name of each of `images` (None where unknown), shown in the
            titles next to the predicted class.
        device: None: CUDA when available, else CPU.
        amp: the precision of the forward and backward passes ("auto", "bf16", "fp16",
            "fp32"; `attnres.precision.resolve_amp`); the maps themselves are fp32.

    Each image is centre-cropped to a square and resized to the input size; the maps are
    drawn on the same crop, on one fixed 0-1 colour scale (`explain_plot`). Returns the
    content of `explain.json`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size={image_size!r}: must be an integer >= 8")
    named_images = _named_images(images, data, num_images, labels)
    models = _named_models(checkpoints, device)
    choice = resolve_amp(amp, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    model_info: list[dict[str, Any]] = []
    # cells[image index] = list of (title, RGB array) after the image itself
    cells: list[list[tuple[str, np.ndarray]]] = [[] for _ in named_images]
    for label, ckpt, model in models:
        with autocast_context(choice, device):
            info, records = _explain_model(label, model, named_images, cells, out, layer,
                                           attention_module, image_size, device)
        model_info.append({"name": label, "checkpoint": ckpt, **info})
        results += records

    drawn = draw_grid(named_images, cells, out / "grid.png")
    summary = {"images": [name for name, _, _ in named_images], "models": model_info,
               "amp": choice.dtype, "amp_reason": choice.reason,
               "results": results, "grid": str(out / "grid.png"), "titles": drawn["titles"]}
    atomic_write(out / "explain.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _explain_model(label: str, model: nn.Module,
                   named_images: list[tuple[str, np.ndarray, str | None]],
                   cells: list[list[tuple[str, np.ndarray]]], out: Path, layer: str | None,
                   attention_module: str | None, image_size: int | None,
                   device: torch.device) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One model on every image: its PNGs written, its panels added to `cells`; returns
    its entry of `models` (layer, attention module, size) and its records."""
    prep = {**DEFAULT_PREPROCESSING, **(getattr(model, "preprocessing", None) or {})}
    size = image_size or int(prep["image_size"])
    layer_name, target = resolve_layer(model, layer)
    attn_name = spatial_attention_module(model, layer_name, attention_module)
    crops = np.stack([center_square(img, size) for _, img, _ in named_images])
    mean = torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = ((torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std).to(device)
    probs, attention = _predict(model, x, attn_name)
    prob, pred = probs.max(dim=1)
    classes = prep["classes"] or [str(i) for i in range(probs.shape[1])]
    cams = grad_cam(model, target, x, pred.tolist())  # (N, size, size)

    records = []
    for i, (img_name, image, true) in enumerate(named_images):
        cls = classes[int(pred[i])] if int(pred[i]) < len(classes) else str(int(pred[i]))
        record = {"image": img_name, "model": label, "true_class": true,
                  "pred_index": int(pred[i]), "pred_class": cls, "prob": float(prob[i]),
                  "cam": map_stats(cams[i])}
        display = center_square(image, max(size, DISPLAY_SIZE))
        side = display.shape[0]
        stem = f"{_safe(img_name)}__{_safe(label)}"
        cam_png = overlay(display, resize_map(cams[i], side))
        save_png(cam_png, out / f"{stem}__cam.png")
        cells[i].append((cam_title(label, true, cls, float(prob[i])), cam_png))
        if attention is not None:
            amap = attention[i, 0].numpy()
            record["attention"] = {"module": attn_name, "map_size": list(amap.shape),
                                   **map_stats(amap)}
            attn_png = overlay(display, resize_map(amap, side))  # fixed 0-1: not rescaled
            save_png(attn_png, out / f"{stem}__attn.png")
            cells[i].append((gate_title(label, _map_title(model, attn_name), amap), attn_png))
        records.append(record)
    return {"layer": layer_name, "attention_module": attn_name, "image_size": size}, records


def _map_title(model: nn.Module, name: str) -> str:
    """`cbam layer3.2.attn spatial`, `coord layer3.2.attn row x column`."""
    kinds = " x ".join(kind for kind, _ in spatial_gates(model)[name])
    return f"{attention_spec(model.get_submodule(name)).name} {name} {kinds}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


__all__ = ["SAMPLE_IMAGES", "dataset_images", "explain", "grad_cam", "map_stats", "sample_images"]
