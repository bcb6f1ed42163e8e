"""Data sets by name: scikit-learn's digits (bundled, no download) and torchvision's CIFAR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .datasets import ImageData, _finish, _stored_size
from .splits import DEFAULT_VAL_SPLIT, DIGITS_VAL_SPLIT

NAMED_DATASETS = ("digits", "cifar10", "cifar100")


def _resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 `(N, 3, H, W)` to `(N, 3, size, size)`; bilinear, antialiased to shrink."""
    if images.shape[-2:] == (size, size):
        return images
    out = []
    for start in range(0, images.shape[0], 2048):
        x = images[start:start + 2048].float()
        shrinking = size < max(images.shape[-2:])
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=shrinking)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _load_digits(val_split: float | None, seed: int, image_size: int | None) -> ImageData:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # bundled with scikit-learn: values 0..16 on an 8x8 grid
    grey = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32))  # (N, 8, 8)
    size = image_size or 32
    stored = _stored_size(size)
    x = grey.unsqueeze(1) * (255.0 / 16.0)
    x = F.interpolate(x, size=(stored, stored), mode="bilinear", align_corners=False)
    images = x.round_().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    classes = [str(c) for c in bunch.target_names]
    return _finish("digits", images, labels, classes, val_split, seed, size,
                   default_val=DIGITS_VAL_SPLIT, info={"source": "sklearn.datasets.load_digits"})


def _load_torchvision_cifar(name: str, val_split: float | None, seed: int,
                            image_size: int | None, cache_dir: Path) -> ImageData:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    root = cache_dir / "torchvision"
    try:
        train = cls(root=str(root), train=True, download=True)
        test = cls(root=str(root), train=False, download=True)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; offline or blocked
        raise ValueError(f"could not download {name} ({type(e).__name__}); offline, pass a "
                         f"local path instead, e.g. --data ../shared/data/"
                         f"cifar10-jpeg-train.tar.gz") from None

    def to_tensor(ds) -> tuple[torch.Tensor, torch.Tensor]:
        imgs = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return imgs, torch.as_tensor(ds.targets, dtype=torch.int64)

    size = image_size or 32
    (xi, yi), (xv, yv) = to_tensor(train), to_tensor(test)
    xi, xv = _resize_batch(xi, _stored_size(size)), _resize_batch(xv, _stored_size(size))
    # the official test split serves as validation unless the user asks for a split
    return _finish(name, xi, yi, list(train.classes), val_split, seed, size,
                   default_val=DEFAULT_VAL_SPLIT, val=(xv, yv),
                   info={"source": f"torchvision.datasets.{cls.__name__}", "root": str(root)})


__all__ = ["NAMED_DATASETS"]
