"""The decoded-image cache: one plain `.npy` of uint8 images `(N, 3, S, S)` (loads at disk
speed) and a small `.npz` of labels, classes and statistics that marks it complete.

A cache entry's name is `<data name>-<key>`, the key a hash of the cache version, the
source (an archive's sha256, a folder's file list) and the requested image size.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..utils import atomic_write

_CACHE_VERSION = 1  # bump when the decoded layout changes, so stale caches are ignored
_CACHE_FIELDS = ("images", "labels", "is_val", "classes", "image_size", "train_hist", "files")


def default_cache_dir() -> Path:
    """`$ATTNRES_CACHE`, else `~/.cache/attnres`."""
    env = os.environ.get("ATTNRES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnres"


def cache_stem(cache_dir: Path, source: Path, key_src: str, image_size: int | None) -> Path:
    """`cache_dir/<name>-<key>` (no suffix) for data read from `source`, identified by
    `key_src`, decoded at `image_size` (None: chosen from the images)."""
    size_key = image_size if image_size is not None else "auto"
    key = hashlib.sha256(f"v{_CACHE_VERSION}|{key_src}|{size_key}".encode()).hexdigest()[:24]
    return cache_dir / f"{source.name.split('.')[0] or 'data'}-{key}"


def save_cache(stem: Path, images: np.ndarray, **meta: np.ndarray) -> None:
    """Images as a plain .npy, then the small .npz that marks it done (written last, so a
    kill between the two leaves an entry that `load_cache` ignores)."""
    atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, images))
    atomic_write(stem.with_suffix(".npz"), lambda f: np.savez(f, **meta))


def load_cache(stem: Path, stacklevel: int = 3) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when absent or unreadable (then the data is decoded again)."""
    meta_path, images_path = stem.with_suffix(".npz"), stem.with_suffix(".npy")
    if not (meta_path.is_file() and images_path.is_file()):
        return None
    try:
        with np.load(meta_path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
        out["images"] = np.load(images_path, allow_pickle=False)
        if out["images"].shape[0] != out["labels"].shape[0]:
            raise ValueError("images and labels disagree")
        missing = set(_CACHE_FIELDS) - set(out)
        if missing:
            raise ValueError(f"fields {sorted(missing)} missing")
        return out
    except Exception:  # a damaged cache is rebuilt, never trusted
        warnings.warn(f"ignoring unreadable cache {images_path}", stacklevel=stacklevel)
        return None


__all__ = ["cache_stem", "default_cache_dir", "load_cache", "save_cache"]

