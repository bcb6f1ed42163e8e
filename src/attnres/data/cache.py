"""The decoded-image cache: images decoded once per source and size, checked on every load.

Where: `cache_dir` when given (`--cache-dir DIR` on the command line), else the folder in
the environment variable `ATTNRES_CACHE`, else `~/.cache/attnres`.

One entry per source and stored image size, `<source key>-<S>px`, the source key being an
archive's sha256 (so a renamed or copied archive shares the entry) or a hash of a folder's
file names, sizes and modification times:

- `<stem>.npy`: the uint8 images `(N, 3, S, S)`, training images first (loads at disk speed);
- `<stem>.npz`: labels, split flags, class names, the training split's channel histogram,
  file names, and a JSON header (format version, dtype, shape, image size, class names,
  images per class in each split, split sizes, the source key, the size chosen
  automatically for this source, and a CRC-32 of every array), sealed by its own CRC-32.
  Written last, so a kill between the two files leaves an incomplete entry.

Every load checks the entry against its header and the header against the request; an
entry that fails any check (unreadable or truncated file, other format version, dtype,
shape, image size, labels, class names or counts, split flags, a checksum) is never used:
a warning names the entry and what did not match, and the data is decoded again. Entries
written before the header existed (format 1, named `<name>-<24 hex>`) are replaced the same
way.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import atomic_write
from .datasets import _stored_size

CACHE_FORMAT = "attnres-decode-cache"
CACHE_VERSION = 2  # bump when the layout changes: older entries are then rebuilt
_ARRAYS = ("labels", "is_val", "classes", "image_size", "train_hist", "files")


class CacheMismatch(Exception):
    """A cache entry that must not be used; the message says what did not match."""


def default_cache_dir() -> Path:
    """`$ATTNRES_CACHE`, else `~/.cache/attnres`."""
    env = os.environ.get("ATTNRES_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "attnres"


def cache_stem(cache_dir: Path, key_src: str, stored_size: int) -> Path:
    """`cache_dir/<source key>-<S>px` (no suffix): the one entry for this source and size."""
    return cache_dir / f"{key_src[:24]}-{int(stored_size)}px"


def legacy_stems(cache_dir: Path, source: Path, key_src: str,
                 image_size: int | None) -> list[Path]:
    """Where format 1 (no header) kept this source at this requested size."""
    size_key = image_size if image_size is not None else "auto"
    key = hashlib.sha256(f"v1|{key_src}|{size_key}".encode()).hexdigest()[:24]
    return [cache_dir / f"{source.name.split('.')[0] or 'data'}-{key}"]


def _crc(arr: np.ndarray) -> int:
    if arr.dtype.kind == "U":  # text: its UTF-8, so the value is the same on every machine
        return zlib.crc32("\0".join(arr.reshape(-1).tolist()).encode())
    return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"))


def make_header(images: np.ndarray, arrays: dict[str, np.ndarray], *, source: str,
                source_path: str, auto_size: int) -> dict[str, Any]:
    """The header of an entry holding `images` `(N, 3, S, S)` and `arrays` (the fields in
    `_ARRAYS`, training images first)."""
    labels, is_val = arrays["labels"], arrays["is_val"]
    classes = [str(c) for c in arrays["classes"]]
    counts = {split: np.bincount(labels[mask], minlength=len(classes)).tolist()
              for split, mask in (("train", ~is_val), ("val", is_val))}
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": source,
            "source_path": source_path, "dtype": str(images.dtype), "shape": list(images.shape),
            "image_size": int(arrays["image_size"]), "stored_size": int(images.shape[-1]),
            "auto_size": int(auto_size), "classes": classes, "counts": counts,
            "n_train": int((~is_val).sum()), "n_val": int(is_val.sum()),
            "crc32": {"images": _crc(images), **{k: _crc(arrays[k]) for k in _ARRAYS}}}


def save_cache(stem: Path, images: np.ndarray, arrays: dict[str, np.ndarray],
               header: dict[str, Any]) -> None:
    """Images as a plain .npy, then the .npz with the arrays and the sealed header."""
    text = json.dumps(header, sort_keys=True)
    seal = np.array(zlib.crc32(text.encode()), dtype=np.uint32)
    stem.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(stem.with_suffix(".npy"), lambda f: np.save(f, images))
    atomic_write(stem.with_suffix(".npz"),
                 lambda f: np.savez(f, header=np.array(text), header_crc32=seal, **arrays))


def _read_npz(stem: Path, source: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(header, arrays) of an entry whose header is whole, of this format and version, and
    for `source`."""
    npz = stem.with_suffix(".npz")
    if not npz.is_file():
        raise CacheMismatch("incomplete entry (no .npz index)")
    try:
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:
        raise CacheMismatch(f"index unreadable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if "header" not in arrays or "header_crc32" not in arrays:
        raise CacheMismatch("no header (written by an older attnres)")
    text = str(arrays.pop("header"))
    if zlib.crc32(text.encode()) != int(arrays.pop("header_crc32")):
        raise CacheMismatch("header checksum does not match (corrupt file)")
    try:
        header = json.loads(text)
        version = (header["format"], header["version"])
    except (ValueError, KeyError, TypeError):
        raise CacheMismatch("header unreadable") from None
    if version != (CACHE_FORMAT, CACHE_VERSION):
        raise CacheMismatch(f"format version {version[1]!r}, expected {CACHE_VERSION}")
    if header.get("source") != source:
        raise CacheMismatch(f"source key {str(header.get('source'))[:24]}..., expected "
                            f"{source[:24]}...")
    return header, arrays


def read_header(stem: Path, source: str) -> dict[str, Any]:
    """The header of the entry at `stem` for `source`, or CacheMismatch saying why not."""
    return _read_npz(stem, source)[0]


def _check_arrays(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Every array against the header: present, checksum, labels, counts, split flags."""
    missing = [k for k in _ARRAYS if k not in arrays]
    if missing:
        raise CacheMismatch(f"fields {', '.join(missing)} missing")
    try:
        n, classes = header["shape"][0], list(header["classes"])
        n_train, n_val, counts = header["n_train"], header["n_val"], header["counts"]
        crcs = header["crc32"]
    except (KeyError, IndexError, TypeError):
        raise CacheMismatch("header incomplete") from None
    names = {"labels": "labels", "is_val": "split flags", "classes": "class names",
             "image_size": "image size", "train_hist": "statistics", "files": "file names"}
    for key, what in names.items():
        if _crc(arrays[key]) != crcs.get(key):
            raise CacheMismatch(f"checksum of the {what} does not match the header")
    if [str(c) for c in arrays["classes"]] != classes:
        raise CacheMismatch("class names differ from the header's")
    if int(arrays["image_size"]) != header["image_size"]:
        raise CacheMismatch(f"image size {int(arrays['image_size'])} differs from the header's "
                            f"{header['image_size']}")
    labels, is_val = arrays["labels"], arrays["is_val"]
    if labels.dtype != np.int64 or labels.shape != (n,) or is_val.shape != (n,):
        raise CacheMismatch(f"labels {labels.dtype} {labels.shape}, expected int64 ({n},)")
    if n_train + n_val != n or is_val.dtype != bool or is_val[:n_train].any() or not (
            is_val[n_train:].all()):
        raise CacheMismatch(f"split flags do not give {n_train} training then {n_val} "
                            f"validation images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise CacheMismatch(f"labels outside 0..{len(classes) - 1}")
    for split, mask in (("train", ~is_val), ("val", is_val)):
        got = np.bincount(labels[mask], minlength=len(classes)).tolist()
        if got != counts.get(split):
            raise CacheMismatch(f"{split} images per class {got}, the header's class counts "
                                f"are {counts.get(split)}")


def _check_images(stem: Path, header: dict[str, Any]) -> np.ndarray:
    """The images of the entry, checked against the header's dtype, shape and checksum."""
    try:
        images = np.load(stem.with_suffix(".npy"), allow_pickle=False)
    except Exception as e:  # missing, truncated, a damaged .npy header
        raise CacheMismatch(f"images unreadable ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:80] if str(e) else ''})") from None
    if str(images.dtype) != header["dtype"] or images.dtype != np.uint8:
        raise CacheMismatch(f"images dtype {images.dtype}, expected uint8")
    if list(images.shape) != header["shape"]:
        raise CacheMismatch(f"images shape {tuple(images.shape)}, expected "
                            f"{tuple(header['shape'])}")
    if not images.flags.c_contiguous:
        raise CacheMismatch("images not in C order")
    if _crc(images) != header["crc32"].get("images"):
        raise CacheMismatch("images checksum does not match (corrupt file)")
    return images


def load_cache(stem: Path, source: str, *, stored_size: int, image_size: int | None = None,
               stacklevel: int = 3) -> dict[str, Any] | None:
    """The entry at `stem` as {"images", the `_ARRAYS` fields, "header"} when it exists and
    passes every check for `source` at `stored_size` (and `image_size` when given); None
    when absent, or, with a warning naming the entry and the mismatch, when it fails."""
    if not (stem.with_suffix(".npy").exists() or stem.with_suffix(".npz").exists()):
        return None
    try:
        header, arrays = _read_npz(stem, source)
        want = (stored_size, image_size if image_size is not None else header["image_size"])
        got = (header.get("stored_size"), header.get("image_size"))
        if got != want:
            raise CacheMismatch(f"image size {got[1]} ({got[0]} px stored), expected "
                                f"{want[1]} ({want[0]} px stored)")
        if header.get("shape", [None] * 4)[1:] != [3, stored_size, stored_size]:
            raise CacheMismatch(f"header shape {header.get('shape')}, expected "
                                f"[N, 3, {stored_size}, {stored_size}]")
        _check_arrays(header, arrays)
        images = _check_images(stem, header)
    except CacheMismatch as e:
        warn_unused(stem, str(e), stacklevel + 1)
        return None
    except Exception as e:  # a header sealed by hand with fields of the wrong type
        warn_unused(stem, f"header inconsistent ({type(e).__name__}: {e})", stacklevel + 1)
        return None
    return dict(arrays, images=images, header=header)


def warn_unused(stem: Path, reason: str, stacklevel: int = 3) -> None:
    warnings.warn(f"ignoring cache {stem}.npy: {reason}; decoding the images again",
                  stacklevel=stacklevel)


def find_auto_entry(cache_dir: Path, source: str, stacklevel: int = 3
                    ) -> tuple[Path, int] | None:
    """(stem, image size) of the entry for the size chosen automatically for `source`, as
    recorded in the header of any entry of that source; None when no entry has a readable
    header (each unreadable one is named in a warning)."""
    prefix = f"{source[:24]}-"
    stems = sorted({p.with_suffix("") for p in cache_dir.glob(f"{prefix}*px.np[yz]")})
    problems = []
    for stem in stems:
        try:
            header = read_header(stem, source)
            auto = int(header["auto_size"])
        except (CacheMismatch, KeyError, TypeError, ValueError) as e:
            problems.append((stem, str(e) if isinstance(e, CacheMismatch) else "header "
                             "incomplete"))
            continue
        return cache_stem(cache_dir, source, _stored_size(auto)), auto
    for stem, reason in problems:
        warn_unused(stem, reason, stacklevel + 1)
    return None


__all__ = ["CACHE_VERSION", "CacheMismatch", "cache_stem", "default_cache_dir",
           "find_auto_entry", "legacy_stems", "load_cache", "make_header", "read_header",
           "save_cache"]
