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
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..attention import attention_spec, closest
from .attention_maps import attention_map, spatial_gates

# Photographs that ship with scikit-image, so `attnres explain` runs offline.
SAMPLE_IMAGES = ("chelsea", "astronaut", "coffee", "rocket")
# Used for models without `preprocessing` (plain modules, not loaded by `load_model`).
DEFAULT_PREPROCESSING = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                         "image_size": 224, "classes": None}
DISPLAY_SIZE = 160  # pixels per grid cell: small inputs (32 px) are shown enlarged


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


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of `(H, W, 3)` uint8 `image`, resized to `(size, size, 3)`."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top:top + side, left:left + side]))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def resize_map(values: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a 2-D float map to `(size, size)`."""
    img = Image.fromarray(np.asarray(values, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))


def _named_images(images: Sequence[Any] | None, data: str | None,
                  num_images: int) -> list[tuple[str, np.ndarray]]:
    if data is not None:
        if images is not None:
            raise ValueError("give images or data, not both")
        return dataset_images(data, num_images)
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
    image for its class in `class_indices`, from the `grad-cam` package."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    targets = [ClassifierOutputTarget(int(c)) for c in class_indices]
    with torch.enable_grad(), GradCAM(model=model, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=x.clone().requires_grad_(True), targets=targets)
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


# -- drawing ------------------------------------------------------------------------------
def overlay(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """`heat` (H, W) in [0, 1] as a jet heat map blended over `image` (H, W, 3) uint8."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    return show_cam_on_image(image.astype(np.float32) / 255, heat.astype(np.float32),
                             use_rgb=True, image_weight=0.5)


def _normalise(values: np.ndarray) -> np.ndarray:
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)


def _atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then move the file into place, so readers never see half.
    The temporary file is created by `write` itself, so it gets the usual permissions."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _save_png(array: np.ndarray, path: Path) -> None:
    _atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


# -- the whole thing ----------------------------------------------------------------------
def explain(checkpoints: Sequence[str | os.PathLike | nn.Module], images: Sequence[Any] | None
            = None, layer: str | None = None, attention_module: str | None = None, *,
            out: str | os.PathLike = "explain", image_size: int | None = None,
            data: str | None = None, num_images: int = 4,
            device: str | torch.device | None = None) -> dict[str, Any]:
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
            this data set (a `load_dataset` spec such as "digits"), one class after another.
        device: None: CUDA when available, else CPU.

    Each image is centre-cropped to a square and resized to the input size; the maps are
    drawn on the same crop. Returns the content of `explain.json`.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size={image_size!r}: must be an integer >= 8")
    named_images = _named_images(images, data, num_images)
    models = _named_models(checkpoints, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    model_info: list[dict[str, Any]] = []
    # cells[image index] = list of (title, RGB array) after the image itself
    cells: list[list[tuple[str, np.ndarray]]] = [[] for _ in named_images]
    for label, ckpt, model in models:
        prep = {**DEFAULT_PREPROCESSING, **(getattr(model, "preprocessing", None) or {})}
        size = image_size or int(prep["image_size"])
        layer_name, target = resolve_layer(model, layer)
        attn_name = spatial_attention_module(model, layer_name, attention_module)
        attn_title = None if attn_name is None else _map_title(model, attn_name)
        model_info.append({"name": label, "checkpoint": ckpt, "layer": layer_name,
                           "attention_module": attn_name, "image_size": size})

        crops = np.stack([center_square(img, size) for _, img in named_images])
        mean = torch.tensor(prep["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(prep["std"], dtype=torch.float32).view(1, 3, 1, 1)
        x = ((torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255 - mean) / std)
        x = x.to(device)
        probs, attention = _predict(model, x, attn_name)
        prob, pred = probs.max(dim=1)
        classes = prep["classes"] or [str(i) for i in range(probs.shape[1])]
        cams = grad_cam(model, target, x, pred.tolist())  # (N, size, size)

        for i, (img_name, _) in enumerate(named_images):
            cls = classes[int(pred[i])] if int(pred[i]) < len(classes) else str(int(pred[i]))
            record = {"image": img_name, "model": label, "pred_index": int(pred[i]),
                      "pred_class": cls, "prob": float(prob[i]),
                      "cam": map_stats(cams[i])}
            display = center_square(named_images[i][1], max(size, DISPLAY_SIZE))
            side = display.shape[0]
            cam_png = overlay(display, np.clip(resize_map(cams[i], side), 0, 1))
            stem = f"{_safe(img_name)}__{_safe(label)}"
            _save_png(cam_png, out / f"{stem}__cam.png")
            cells[i].append((f"{label} Grad-CAM\n{cls} {float(prob[i]):.2f}", cam_png))
            if attention is not None:
                amap = attention[i, 0].numpy()
                record["attention"] = {"module": attn_name, "map_size": list(amap.shape),
                                       **map_stats(amap)}
                attn_png = overlay(display, resize_map(_normalise(amap), side).clip(0, 1))
                _save_png(attn_png, out / f"{stem}__attn.png")
                cells[i].append((f"{label} {attn_title}\n{amap.min():.2f}-{amap.max():.2f}",
                                 attn_png))
            results.append(record)

    summary = {"images": [name for name, _ in named_images], "models": model_info,
               "results": results, "grid": str(out / "grid.png")}
    _draw_grid(named_images, cells, out / "grid.png")
    text = json.dumps(summary, indent=2)
    _atomic_write(out / "explain.json", lambda tmp: Path(tmp).write_text(text + "\n"))
    return summary


def _map_title(model: nn.Module, name: str) -> str:
    """`cbam layer3.2.attn spatial`, `coord layer3.2.attn row x column`."""
    kinds = " x ".join(kind for kind, _ in spatial_gates(model)[name])
    return f"{attention_spec(model.get_submodule(name)).name} {name} {kinds}"


def _draw_grid(named_images: list[tuple[str, np.ndarray]],
               cells: list[list[tuple[str, np.ndarray]]], path: Path) -> None:
    # A bare Figure renders with Agg whatever pyplot backend the caller has chosen.
    from matplotlib.figure import Figure

    rows, cols = len(named_images), 1 + max(len(c) for c in cells)
    fig = Figure(figsize=(2.3 * cols, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, ((name, image), row_cells) in enumerate(zip(named_images, cells)):
        panels = [(name, center_square(image, DISPLAY_SIZE)), *row_cells]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(panels):
                ax.imshow(panels[c][1])
                ax.set_title(panels[c][0], fontsize=8)
    fig.suptitle("Grad-CAM (predicted class, probability) and spatial attention maps",
                 fontsize=10)
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


__all__ = ["SAMPLE_IMAGES", "dataset_images", "explain", "grad_cam", "map_stats", "sample_images"]
