"""Data at any scale: `choose_loader_kind` picks the in-memory path (`load_dataset` +
`make_loaders`) or the streaming path (`open_stream` + `make_stream_loaders`) by the data
set's decoded size against a RAM budget. Both paths agree on the classes, the image size, the
validation images (the same stratified split of the same sorted file list) and the batch order.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..utils import closest
from .datasets import SMALL_MAX_SIZE, _kind_for, _stored_size, channel_histogram, \
    stats_from_histogram
from .decode import decode_image_bytes
from .named import NAMED_DATASETS
from .records import Records
from .shards import Listing, list_source
from .splits import DEFAULT_VAL_SPLIT, _check_val_split, stratified_split
from .stream import StreamLoader

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the usual ImageNet statistics, for --recipe presets
IMAGENET_STD = (0.229, 0.224, 0.225)
LOADER_KINDS = ("auto", "memory", "stream")
MEMORY_PEAK_FACTOR = 2  # the in-memory path holds the decoded array and its split copies


@dataclass
class StreamData:
    """A data set read from disk while training: the `ImageData` fields, with `Records` (where
    each image's bytes are, and its label) in place of image tensors.

    `info` holds what a run should record: source, layout, listing (JSON path), fingerprint,
    n_train, n_val, split_seed and how the statistics were obtained (`stats`).
    """

    train: Records
    val: Records
    classes: list[str]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int
    kind: str
    name: str
    info: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def _check_exists(spec: str | Path) -> None:
    """The message `load_dataset` gives for a name that is neither known nor a path."""
    if not Path(spec).expanduser().exists():
        name = str(spec).lower()
        raise FileNotFoundError(f"data {str(spec)!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path"
                                f"{closest(name, NAMED_DATASETS)}")


def _split(listing: Listing, val_split: float | None, seed: int) -> tuple[Records, Records]:
    """The in-memory path's split rule (`datasets._finish`) on the listing's records."""
    if listing.val is not None and val_split is None:
        return listing.train, listing.val
    if listing.val is not None:
        warnings.warn(f"{Path(listing.source).name}: val_split given, so the separate "
                      f"validation images are not used; the training images are split "
                      f"instead", stacklevel=3)
    labels = torch.from_numpy(listing.train.labels)
    n_val = _check_val_split(DEFAULT_VAL_SPLIT if val_split is None else val_split,
                             labels.numel())
    train_idx, val_idx = stratified_split(labels, n_val, seed)
    return listing.train.select(train_idx.numpy()), listing.train.select(val_idx.numpy())


def _image_size(listing: Listing, image_size: int | None) -> int:
    if image_size is not None:
        return image_size
    side = listing.common_side
    return side if side is not None and side <= SMALL_MAX_SIZE else 224


def estimate_stats(records: Records, stored_size: int, sample: int = 1000
                   ) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and std on the [0, 1] scale of up to `sample` evenly spaced images,
    decoded as the in-memory path stores them (so with every image they are its exact ones)."""
    n = len(records)
    idx = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))
    hist = torch.zeros(3, 256, dtype=torch.int64)
    for start in range(0, idx.size, 256):
        chunk = [decode_image_bytes(records.read(int(i)), stored_size)
                 for i in idx[start:start + 256]]
        hist += channel_histogram(torch.stack(chunk))
    return stats_from_histogram(hist)


def open_stream(spec: str | Path, *, val_split: float | None = None, seed: int = 0,
                image_size: int | None = None, cache_dir: str | Path | None = None,
                sha256: str | None = None, mean: tuple[float, float, float] | None = None,
                std: tuple[float, float, float] | None = None, stats_sample: int = 1000,
                refresh: bool = False) -> StreamData:
    """A `StreamData` for the folder, tar archive or folder of tar shards at `spec`.

    Arguments as `load_dataset` (same defaults, same split, same image size rule), plus:
    mean/std: normalisation statistics (both or neither); None estimates them from
    `stats_sample` evenly spaced training images (all of them for small sets) and keeps the
    result in the listing's JSON. refresh: list the source again even if the cache is current.
    """
    if str(spec).lower() in NAMED_DATASETS:
        raise ValueError(f"data {str(spec)!r} is a named data set; streaming reads a folder, "
                         f"a .tar archive or a folder of .tar shards (use load_dataset)")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size {image_size!r} must be a whole number >= 8")
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then they are estimated)")
    if not isinstance(stats_sample, int) or stats_sample < 1:
        raise ValueError(f"stats_sample {stats_sample!r} must be a whole number >= 1")
    _check_exists(spec)
    listing = list_source(spec, cache_dir=cache_dir, sha256=sha256, refresh=refresh)
    present = set(listing.train.labels.tolist())
    for c, name in enumerate(listing.classes):
        if c not in present:
            raise ValueError(f"{listing.source}: class {name!r} has no training images")
    train, val = _split(listing, val_split, seed)
    size = _image_size(listing, image_size)
    info = {"source": listing.source, "layout": listing.layout, "listing": str(listing.path),
            "fingerprint": listing.fingerprint, "n_train": len(train), "n_val": len(val),
            "split_seed": seed, "val_given": listing.val is not None and val_split is None}
    if mean is None:
        order = hashlib.sha256(train.names_blob.tobytes() + train.name_start.tobytes())
        key = f"stats|{_stored_size(size)}|{stats_sample}|{order.hexdigest()[:16]}"
        mean, std = listing.memoized(key, lambda: [list(v) for v in estimate_stats(
            train, _stored_size(size), stats_sample)])
        info["stats"] = f"estimated from {min(len(train), stats_sample)} training images"
    else:
        info["stats"] = "given"
    return StreamData(train=train, val=val, classes=list(listing.classes),
                      mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                      image_size=size, kind=_kind_for(size), name=Path(listing.source).name,
                      info=info)


def make_stream_loaders(data: StreamData, batch_size: int, *, seed: int = 0, rank: int = 0,
                        world_size: int = 1, device: str | torch.device | None = None,
                        val_batch_size: int | None = None, num_workers: int = 0,
                        pin_memory: bool | None = None,
                        persistent_workers: bool | None = None,
                        prefetch_factor: int | None = None
                        ) -> tuple[StreamLoader, StreamLoader]:
    """Training (shuffled, augmented, padded across ranks) and validation (in order, not
    padded: each image is counted once when sums are reduced) loaders, as `make_loaders`."""
    common = dict(mean=data.mean, std=data.std, kind=data.kind, image_size=data.image_size,
                  seed=seed, rank=rank, world_size=world_size, device=device,
                  num_workers=num_workers, pin_memory=pin_memory,
                  persistent_workers=persistent_workers, prefetch_factor=prefetch_factor)
    train = StreamLoader(data.train, batch_size=batch_size, train=True, **common)
    val = StreamLoader(data.val, batch_size=val_batch_size or batch_size, train=False, **common)
    return train, val


def available_memory() -> int:
    """Bytes this process can still use: MemAvailable, capped by a cgroup v2 limit."""
    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # containers: the cgroup's limit less what it already uses
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(0, avail)


def estimate_decoded_bytes(spec: str | Path | Listing, *, image_size: int | None = None,
                           cache_dir: str | Path | None = None) -> int:
    """Bytes of the in-memory path's uint8 array for `spec`: images x 3 x stored side^2."""
    listing = spec if isinstance(spec, Listing) else list_source(spec, cache_dir=cache_dir)
    side = _stored_size(_image_size(listing, image_size))
    return listing.num_images * 3 * side * side


def choose_loader_kind(spec: str | Path, *, image_size: int | None = None,
                       ram_budget: int | None = None, processes: int = 1,
                       cache_dir: str | Path | None = None, kind: str = "auto") -> str:
    """"memory" or "stream" for the data at `spec`.

    kind: "auto" decides; "memory"/"stream" forces (shard folders are always streamed).
    Named data sets ("digits", "cifar10", ...) are small: memory. Otherwise memory when
    `MEMORY_PEAK_FACTOR` x the decoded size x `processes` (the ranks on this machine, each
    holding its own copy) fits `ram_budget` bytes (default: half of `available_memory()`).
    """
    if kind not in LOADER_KINDS:
        raise ValueError(f"loader kind {kind!r} is not one of: {', '.join(LOADER_KINDS)}"
                         f"{closest(kind, LOADER_KINDS)}")
    if ram_budget is not None and (not isinstance(ram_budget, int) or ram_budget < 0):
        raise ValueError(f"ram_budget {ram_budget!r} must be a whole number of bytes >= 0")
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"processes {processes!r} must be a whole number >= 1")
    if str(spec).lower() in NAMED_DATASETS:
        if kind == "stream":
            raise ValueError(f"data {str(spec)!r} is a named data set: it cannot be streamed")
        return "memory"
    _check_exists(spec)
    listing = list_source(spec, cache_dir=cache_dir)
    if listing.layout == "shards":
        if kind == "memory":
            raise ValueError(f"{spec}: a folder of .tar shards can only be streamed "
                             f"(loader kind stream or auto)")
        return "stream"
    if kind != "auto":
        return kind
    budget = available_memory() // 2 if ram_budget is None else ram_budget
    need = MEMORY_PEAK_FACTOR * estimate_decoded_bytes(listing, image_size=image_size)
    return "memory" if need * processes <= budget else "stream"


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "LOADER_KINDS", "MEMORY_PEAK_FACTOR",
           "StreamData", "available_memory", "choose_loader_kind", "estimate_decoded_bytes",
           "estimate_stats", "make_stream_loaders", "open_stream"]
