"""Class probabilities for new images: `predict(model, images)` and `find_images(specs)`.

Images are prepared exactly as evaluation prepares a validation split, from the model's own
`model.preprocessing` ({"mean", "std", "image_size", "classes"}, stored with every training
checkpoint): decoded to RGB, shorter side resized and centre cropped (to the stored size
of the data: `image_size` for <= 64 px data, `ceil(image_size * 8 / 7)` above, then centre
cropped to `image_size`), and normalised with the training mean/std by `BatchLoader`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import IMAGE_EXTENSIONS, BatchLoader, decode_image_bytes
from .data.datasets import _kind_for, _stored_size
from .data.decode import fit_image, pil_to_tensor

Prediction = list[tuple[str, float]]  # (class, probability), most probable first


def find_images(specs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by `specs`: files as given, folders searched recursively for image
    files (by extension, sorted), glob patterns expanded (sorted). FileNotFoundError names a
    path that does not exist, a pattern that matches nothing, or a folder without images."""
    found: list[Path] = []
    for spec in specs:
        text = os.fspath(spec)
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS))
            if not files:
                raise FileNotFoundError(f"folder {text!r} holds no images "
                                        f"({', '.join(IMAGE_EXTENSIONS)})")
            found += files
        elif path.is_file():
            found.append(path)
        elif glob.has_magic(text):
            files = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                           if Path(p).is_file())
            if not files:
                raise FileNotFoundError(f"no file matches {text!r}")
            found += files
        else:
            raise FileNotFoundError(f"image {text!r} not found")
    return found


def _pixels(image: Any, size: int) -> torch.Tensor:
    """One image (path, PIL image, or tensor `(C, H, W)` / `(H, W)`: uint8, or float in
    [0, 1]) as uint8 RGB `(3, size, size)`, resized and centre cropped as data is loaded."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image {str(image)!r} not found")
        try:
            return decode_image_bytes(path.read_bytes(), size)
        except Exception as e:  # any decoder's failure: one line naming the file
            reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
            raise ValueError(f"{str(image)!r} is not a readable image ({reason})") from None
    if isinstance(image, torch.Tensor):
        x = image.detach().cpu()
        x = x[None] if x.dim() == 2 else x
        if x.dim() != 3 or not 1 <= x.shape[0] <= 4:
            raise ValueError(f"image tensor of shape {tuple(image.shape)}: expected (C, H, W) "
                             f"with C in 1..4, or (H, W)")
        if x.is_floating_point():
            if not (torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
                raise ValueError("float image tensors must hold values in [0, 1] (not yet "
                                 "normalised: predict normalises with model.preprocessing)")
            x = (x * 255).round_().to(torch.uint8)
        elif x.dtype != torch.uint8:
            raise ValueError(f"image tensor of dtype {image.dtype}: expected uint8 or float")
        return fit_image(x, size)
    if _is_pil(image):
        return fit_image(pil_to_tensor(image), size)
    raise ValueError(f"cannot read an image from {type(image).__name__}: pass paths, PIL "
                     f"images or tensors")


def _is_pil(obj: Any) -> bool:
    return type(obj).__module__.startswith("PIL.")  # without importing PIL


def _as_list(images: Any) -> list[Any]:
    if isinstance(images, (str, os.PathLike)) or _is_pil(images):
        return [images]
    if isinstance(images, torch.Tensor):
        return list(images) if images.dim() == 4 else [images]
    return list(images)


@torch.inference_mode()
def predict(model: nn.Module, images: Any, *, top_k: int = 5, batch_size: int = 64,
            preprocessing: dict[str, Any] | None = None) -> list[Prediction]:
    """The `top_k` most probable classes of each image: `[[(class, probability), ...], ...]`,
    one list per image in the given order, most probable first.

    model: a classifier `(B, 3, S, S)` -> `(B, K)` logits carrying `model.preprocessing`
        (as `attnres.load_model` returns it); inputs go to the model's device.
    images: one or a sequence of image paths, PIL images, or tensors `(C, H, W)` (uint8, or
        float in [0, 1], RGB, not normalised); a `(N, C, H, W)` tensor is N images.
    preprocessing: overrides `model.preprocessing` ({"mean", "std", "image_size", and
        optionally "classes"; without classes they are named "0", "1", ...}).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k={top_k!r}: must be a positive integer")
    prep = dict(preprocessing if preprocessing is not None
                else getattr(model, "preprocessing", None) or {})
    if not {"mean", "std", "image_size"} <= set(prep):
        raise ValueError("the model carries no preprocessing (mean, std, image_size): load it "
                         "with attnres.load_model, or pass preprocessing=")
    size = int(prep["image_size"])
    items = _as_list(images)
    if not items:
        return []
    pixels = torch.stack([_pixels(item, _stored_size(size)) for item in items])
    loader = BatchLoader(pixels, torch.zeros(len(items), dtype=torch.int64),
                         batch_size=batch_size, train=False, mean=prep["mean"], std=prep["std"],
                         kind=_kind_for(size), image_size=size)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        probs = torch.cat([model(x.to(device)).float().softmax(dim=1).cpu() for x, _ in loader])
    finally:
        model.train(was_training)
    classes = _class_names(prep, probs.shape[1])
    top = probs.topk(min(top_k, probs.shape[1]), dim=1)
    return [[(classes[i], float(p)) for p, i in zip(values.tolist(), indices.tolist())]
            for values, indices in zip(top.values, top.indices)]


def _class_names(prep: dict[str, Any], outputs: int) -> Sequence[str]:
    classes = list(prep.get("classes") or [str(i) for i in range(outputs)])
    if len(classes) != outputs:
        raise ValueError(f"the model gives {outputs} outputs but its preprocessing names "
                         f"{len(classes)} classes")
    return classes


__all__ = ["Prediction", "find_images", "predict"]
