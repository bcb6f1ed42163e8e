"""What a loaded data set is: `ImageSet` (one split), `ImageData` (two splits, classes,
statistics), the exact channel statistics, and the step that splits and packages them."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from .splits import _check_val_split, stratified_split

SMALL_MAX_SIZE = 64  # data at or below this many pixels is augmented like CIFAR


@dataclass
class ImageSet:
    """One split: `images` uint8 `(N, 3, H, W)`, `labels` int64 `(N,)`."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:  # the tensors' values would fill the screen
        shape = "x".join(map(str, self.images.shape[1:]))
        return f"ImageSet({len(self)} images of {shape} {self.images.dtype}".replace(
            "torch.", "") + ")"


@dataclass
class ImageData:
    """A data set ready for training: two splits, class names and normalisation statistics.

    `mean`/`std` are per-channel statistics of the training split on the [0, 1] scale.
    `kind` is "small" (<= 64 px: pad-crop + flip) or "imagenet" (random-resized-crop + flip);
    for "imagenet" the stored images are `ceil(image_size * 8 / 7)` pixels (256 for 224) and
    are cropped to `image_size` by the loader.
    """

    train: ImageSet
    val: ImageSet
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    kind: str
    name: str
    info: dict = field(default_factory=dict)  # where it came from, cache file, split sizes

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:  # names, counts and sizes; never the tensors' values
        shown = ", ".join(self.classes[:10]) + (", ..." if len(self.classes) > 10 else "")
        return (f"ImageData({self.name!r}: {len(self.train)} train / {len(self.val)} val "
                f"images, {self.image_size}x{self.image_size} px, {self.num_classes} "
                f"classes [{shown}], kind {self.kind!r})")


def channel_histogram(images: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """Counts of each uint8 value per channel of `(N, 3, H, W)` images: int64 `(3, 256)`."""
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        part = images[start:start + chunk]
        for c in range(3):
            hist[c] += torch.bincount(part[:, c].reshape(-1), minlength=256)
    return hist


def stats_from_histogram(hist: torch.Tensor
                         ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Exact per-channel mean and population std on the [0, 1] scale from `(3, 256)` counts."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    count = hist.sum(dim=1).double()
    if bool((count == 0).any()):
        raise ValueError("cannot compute statistics of an empty image set")
    mean = (hist * values).sum(dim=1) / count
    var = (hist * (values - mean[:, None]) ** 2).sum(dim=1) / count
    std = var.sqrt().clamp(min=1e-3)  # a constant channel must not divide by zero
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def channel_stats(images: torch.Tensor
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std (population) of uint8 `(N, 3, H, W)` images on the [0, 1] scale."""
    return stats_from_histogram(channel_histogram(images))


def _kind_for(image_size: int) -> str:
    return "small" if image_size <= SMALL_MAX_SIZE else "imagenet"


def _stored_size(image_size: int) -> int:
    """Pixels kept per side: small data as is; ImageNet-style data with a crop margin."""
    return image_size if image_size <= SMALL_MAX_SIZE else math.ceil(image_size * 8 / 7)


def _finish(name: str, images: torch.Tensor, labels: torch.Tensor, classes: list[str],
            val_split: float | None, seed: int, image_size: int, *,
            default_val: float, val: tuple[torch.Tensor, torch.Tensor] | None = None,
            info: dict | None = None, hist: torch.Tensor | None = None) -> ImageData:
    """Split (unless a separate validation set is given), compute statistics, package.

    hist: `channel_histogram(images)` when already known (cached), so a split only needs
    the validation images counted.
    """
    if val is not None and val_split is None:
        train = ImageSet(images, labels)
        val_set = ImageSet(*val)
    else:
        if val is not None:  # an explicit --val-split re-splits the training part only
            warnings.warn(f"{name}: val_split given, so the separate validation images are "
                          f"not used; the training images are split instead", stacklevel=3)
        n_val = _check_val_split(default_val if val_split is None else val_split,
                                 labels.numel())
        train_idx, val_idx = stratified_split(labels, n_val, seed)
        train = ImageSet(images[train_idx], labels[train_idx])
        val_set = ImageSet(images[val_idx], labels[val_idx])
        if hist is not None:  # train counts = all counts - validation counts
            hist = hist - channel_histogram(val_set.images)
    mean, std = stats_from_histogram(hist if hist is not None else
                                     channel_histogram(train.images))
    info = dict(info or {}, n_train=len(train), n_val=len(val_set), split_seed=seed,
                val_given=val is not None and val_split is None)  # the data's own val set
    return ImageData(train=train, val=val_set, classes=list(classes), mean=mean, std=std,
                     image_size=image_size, kind=_kind_for(image_size), name=name, info=info)


def describe(data: ImageData) -> str:
    """One line: name, sizes, classes, image size."""
    return (f"{data.name}: {len(data.train)} train / {len(data.val)} val images, "
            f"{data.num_classes} classes, {data.image_size}x{data.image_size} ({data.kind})")


__all__ = ["ImageData", "ImageSet", "SMALL_MAX_SIZE", "channel_histogram", "channel_stats",
           "describe", "stats_from_histogram"]
