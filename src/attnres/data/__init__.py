"""Image data sets by name or path, stratified splits, decode caching and batch augmentation.

`load_dataset(spec)` returns an `ImageData`: uint8 image tensors `(N, 3, H, W)` for a training
and a validation split, the class names and the training split's channel statistics.
`BatchLoader` turns one split into normalised float batches, augmenting whole uint8 batches
as tensors (no per-image PIL work), so an epoch over 45,000 CIFAR images costs little on a CPU.

Specs:
- ``"digits"``: scikit-learn's bundled 1,797 handwritten 8x8 digits, resized to 32x32, grey
  repeated over 3 channels; needs no download.
- ``"cifar10"`` / ``"cifar100"``: torchvision's data sets (downloaded when online).
- a path to an ImageFolder directory (``root/<class>/<image>``, or ``root/train/<class>`` and
  ``root/val/<class>``) or to a ``.tar`` / ``.tar.gz`` / ``.tgz`` archive holding one.
  Images of every mode become 8-bit RGB by fixed rules (16-bit by value / 257, alpha over
  white; see `decode`). Decoded images are cached as ``.npy`` + ``.npz`` in ``cache_dir``
  (``--cache-dir``; default ``$ATTNRES_CACHE``, else ``~/.cache/attnres``), one entry per
  archive sha256 or folder listing and image size, checked against its header on every load
  and rebuilt with a warning when anything does not match (see `cache`).

Data too large for memory is streamed instead (docs/SCALE.md): `choose_loader_kind(spec)` says
"memory" or "stream"; `open_stream(spec)` + `make_stream_loaders` give loaders with the
`BatchLoader` contract that decode in DataLoader workers.

Modules: `splits` (validation splits), `datasets` (ImageData, statistics), `named` (digits,
CIFAR), `decode` (image bytes to RGB), `cache`, `folder` (ImageFolder folders and archives),
`augment` (batch augmentation), `loader` (BatchLoader); streaming: `tars` (tar index),
`shards` (cached file listings), `stream` (StreamLoader), `scale` (open_stream, the chooser),
`photos` (an ImageFolder of real photographs).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..utils import closest
from .augment import center_crop, pad_crop_flip, random_resized_crop_flip
from .cache import default_cache_dir
from .datasets import (SMALL_MAX_SIZE, ImageData, ImageSet, channel_histogram, channel_stats,
                       describe, stats_from_histogram)
from .decode import _decode_all, decode_image_bytes  # _decode_all: the tests call it here
from .folder import (ARCHIVE_SUFFIXES, IMAGE_EXTENSIONS, TRAIN_DIR_NAMES, VAL_DIR_NAMES,
                     file_sha256, load_path)
from .loader import BatchLoader, make_loaders
from .stream import StreamLoader
from .named import NAMED_DATASETS, _load_digits, _load_torchvision_cifar
from .photos import make_photo_folder
from .scale import (IMAGENET_MEAN, IMAGENET_STD, StreamData, choose_loader_kind,
                    estimate_decoded_bytes, make_stream_loaders, open_stream)
from .shards import list_source
from .splits import DEFAULT_VAL_SPLIT, DIGITS_VAL_SPLIT, stratified_split


def load_dataset(spec: str, *, val_split: float | None = None, seed: int = 0,
                 image_size: int | None = None, cache_dir: str | Path | None = None,
                 sha256: str | None = None) -> ImageData:
    """Load a data set by name ("digits", "cifar10", "cifar100") or ImageFolder path/archive.

    val_split: fraction in (0, 1) or whole number of validation images, split stratified by
        class with `seed`; None uses the data set's own validation images when it has them
        (cifar test split, root/val/ folder), else 0.2 for digits and 0.1 otherwise.
    image_size: side of the images the model sees; default 32 for digits/cifar, the most
        common side for folders (224 when above 64 px).
    sha256: expected archive checksum (also read from a `<archive>.sha256` sidecar).
    Images of any mode are converted to RGB (rules in `attnres.data.decode`); other sizes are
    resized (shorter side) and centre cropped. Unreadable images and empty class folders raise
    ValueError listing all of them before any training starts.
    """
    if not isinstance(spec, (str, os.PathLike)) or not str(spec):
        raise ValueError(f"data spec {spec!r} must be a name ({', '.join(NAMED_DATASETS)}) "
                         f"or a path")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise ValueError(f"image_size {image_size!r} must be a whole number >= 8")
    spec = str(spec)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = spec.lower()
    if name == "digits":
        return _load_digits(val_split, seed, image_size)
    if name in ("cifar10", "cifar100"):
        return _load_torchvision_cifar(name, val_split, seed, image_size, cache)
    if not Path(spec).expanduser().exists():
        raise FileNotFoundError(f"data {spec!r} is neither a known name "
                                f"({', '.join(NAMED_DATASETS)}) nor an existing path"
                                f"{closest(name, NAMED_DATASETS)}")
    return load_path(spec, val_split, seed, image_size, cache, sha256)


__all__ = ["ARCHIVE_SUFFIXES", "BatchLoader", "DEFAULT_VAL_SPLIT", "DIGITS_VAL_SPLIT",
           "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_EXTENSIONS", "ImageData", "ImageSet",
           "NAMED_DATASETS", "SMALL_MAX_SIZE", "StreamData", "StreamLoader", "TRAIN_DIR_NAMES",
           "VAL_DIR_NAMES", "center_crop", "channel_histogram", "channel_stats",
           "choose_loader_kind", "decode_image_bytes", "default_cache_dir", "describe",
           "estimate_decoded_bytes", "file_sha256", "list_source", "load_dataset",
           "make_loaders", "make_photo_folder", "make_stream_loaders", "open_stream",
           "pad_crop_flip", "random_resized_crop_flip", "stats_from_histogram",
           "stratified_split"]
