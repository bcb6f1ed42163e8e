"""Data sets from a path: ImageFolder layouts (`root/<class>/<image>` or
`root/train|val/<class>/<image>`), in a folder or a tar archive, checked by sha256,
decoded once and cached."""

from __future__ import annotations

import hashlib
import os
import tarfile
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .cache import (cache_stem, find_auto_entry, legacy_stems, load_cache, make_header,
                    save_cache, warn_unused)
from .datasets import ImageData, _finish, _stored_size, channel_histogram
from .decode import _choose_size, _decode_all
from .splits import DEFAULT_VAL_SPLIT

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
# Split folder names recognised under an ImageFolder root (root/train/<class>, root/val/<class>).
TRAIN_DIR_NAMES = ("train", "training")
VAL_DIR_NAMES = ("val", "valid", "validation", "test")
Listing = tuple[list[str], list[str], list[str]]  # image files, folders, skipped files
Layout = tuple[list[str], dict[str, list[tuple[str, int]]]]  # classes, {split: [(file, label)]}


def member_path(name: str) -> str:
    """A tar member's name without leading "./" and surrounding "/" ("" for the root)."""
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def parent_folders(path: str) -> list[str]:
    """The folders above `path`: "a/b/c.jpg" -> ["a", "a/b"]."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _layout(files: Sequence[str], dirs: Sequence[str], where: str) -> Layout:
    """Work out the ImageFolder layout from relative POSIX paths of image files and folders.

    Returns (classes, {"train": [(path, label)], "val": [...]}) where "val" is empty unless
    the root holds train/ and val/ folders. Class folders without images (all of them named)
    and images not inside a class folder are a ValueError.
    """
    parents = {f.rsplit("/", 1)[0] if "/" in f else "" for f in files}
    if not files:
        raise ValueError(f"{where}: no image files found (looked for "
                         f"{', '.join(IMAGE_EXTENSIONS)})")
    if "" in parents:
        loose = [f for f in files if "/" not in f][:5]
        raise ValueError(f"{where}: images must sit in class folders (root/<class>/<image>); "
                         f"found loose images: {', '.join(loose)}")
    roots = {p.rsplit("/", 1)[0] if "/" in p else "" for p in parents}
    # root/train/<class> + root/val/<class>: a given validation split
    split_roots: dict[str, str] = {}
    if len(roots) == 2:
        for r in roots:
            leaf = r.rsplit("/", 1)[-1].lower()
            if leaf in TRAIN_DIR_NAMES:
                split_roots["train"] = r
            elif leaf in VAL_DIR_NAMES:
                split_roots["val"] = r
        if set(split_roots) != {"train", "val"} or len({r.rsplit("/", 1)[0] if "/" in r else ""
                                                        for r in roots}) != 1:
            split_roots = {}
    if not split_roots:
        if len(roots) != 1:
            raise ValueError(f"{where}: images sit at different depths "
                             f"({', '.join(sorted(roots)[:4])}); expected root/<class>/<image> "
                             f"or root/train|val/<class>/<image>")
        split_roots = {"train": next(iter(roots))}

    def class_dirs_under(root: str) -> set[str]:
        prefix = f"{root}/" if root else ""
        return {d[len(prefix):] for d in dirs
                if d.startswith(prefix) and d != root and "/" not in d[len(prefix):]}

    train_root = split_roots["train"]
    prefix = f"{train_root}/" if train_root else ""
    # class folders = the parents of images that sit directly under the training root
    classes = sorted({p[len(prefix):] for p in parents
                      if p.startswith(prefix) and "/" not in p[len(prefix):]})
    empty = []
    for split, root in split_roots.items():
        pre = f"{root}/" if root else ""
        with_images = {p[len(pre):] for p in parents if p.startswith(pre)}
        shown = f"{root.rsplit('/', 1)[-1]}/" if len(split_roots) == 2 else ""
        empty += [f"{shown}{d}" for d in sorted(class_dirs_under(root) - with_images)
                  if not d.startswith(".")]
    if empty:
        raise ValueError(f"{where}: class folder(s) with no images: {', '.join(empty)} "
                         f"(add images or remove them)")
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    for split, root in split_roots.items():
        pre = f"{root}/" if root else ""
        for f in files:
            if not f.startswith(pre):
                continue
            cls = f[len(pre):].split("/", 1)[0]
            if cls not in index:
                raise ValueError(f"{where}: validation class folder {cls!r} has no training "
                                 f"images; classes are {', '.join(classes)}")
            out[split].append((f, index[cls]))
    for split in out:
        out[split].sort()
    return classes, out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _expected_sha256(path: Path, sha256: str | None) -> str | None:
    if sha256:
        return sha256.strip().lower()
    for sidecar in (path.with_name(path.name + ".sha256"), path.with_suffix(".sha256")):
        if sidecar.is_file():
            text = sidecar.read_text().strip().split()
            if text:
                return text[0].lower()
    return None


def _read_archive(path: Path) -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
    """Stream an archive once: image bytes by member name, plus all dirs and skipped files.

    Truncated or corrupt archives raise ValueError naming the file.
    """
    items: list[tuple[str, bytes]] = []
    dirs: set[str] = set()
    skipped: list[str] = []
    try:
        with tarfile.open(path, mode="r|*") as tar:  # a stream: 2x faster, nothing on disk
            for member in tar:
                name = member_path(member.name)
                if not name:
                    continue
                dirs.update(parent_folders(name))
                if member.isdir():
                    dirs.add(name)
                    continue
                if not member.isfile() or name.rpartition("/")[2].startswith("."):
                    continue
                if not _is_image(name):
                    skipped.append(name)
                    continue
                f = tar.extractfile(member)
                items.append((name, f.read() if f is not None else b""))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else "read error"
        raise ValueError(f"archive {path} is truncated or corrupt ({type(e).__name__}: "
                         f"{reason})") from None
    return items, sorted(dirs), skipped


def _scan_folder(root: Path) -> Listing:
    """Relative POSIX paths of image files, of folders, and of skipped non-image files."""
    files, dirs, skipped = [], [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root).as_posix()
        rel = "" if rel == "." else rel
        for d in dirnames:
            dirs.append(f"{rel}/{d}" if rel else d)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            (files if _is_image(name) else skipped).append(f"{rel}/{name}" if rel else name)
    return files, dirs, skipped


def _source_key(path: Path, sha256: str | None, info: dict) -> tuple[str, Listing | None]:
    """What identifies the data for the cache: an archive's sha256 (checked against
    `sha256` or a sidecar), or a hash of a folder's file names, sizes and mtimes (then also
    the folder's listing, so it is walked once)."""
    if path.is_file():
        digest = file_sha256(path)
        expected = _expected_sha256(path, sha256)
        if expected is not None and expected != digest:
            raise ValueError(f"archive {path} has sha256 {digest}, expected {expected} "
                             f"(the file is damaged or not the one you meant)")
        info["sha256"] = digest
        return digest, None
    files, dirs, skipped = _scan_folder(path)
    h = hashlib.sha256()
    for f in files:  # names, sizes and mtimes: a changed file changes the key
        st = (path / f).stat()
        h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest(), (files, dirs, skipped)


def _decode_source(path: Path, listing: Listing | None, layout: Layout | None,
                   image_size: int | None, cache_dir: Path, key_src: str
                   ) -> tuple[dict[str, np.ndarray], Path]:
    """Read, lay out and decode every image of `path` (training images first), cache the
    result and return it in the cache's fields, with the cache entry's stem."""
    if listing is None:
        items, dirs, skipped = _read_archive(path)
        classes, split = _layout([n for n, _ in items], dirs, str(path))
        by_name = dict(items)
    else:
        skipped = listing[2]
        classes, split = layout
        by_name = {f: (path / f).read_bytes() for f, _ in split["train"] + split["val"]}
    if skipped:
        warnings.warn(f"{path}: ignored {len(skipped)} non-image file(s), e.g. "
                      f"{', '.join(skipped[:3])}", stacklevel=5)
    ordered = [(n, by_name[n]) for n, _ in split["train"] + split["val"]]
    auto = _choose_size(ordered, None)
    size = image_size if image_size is not None else auto
    decoded = _decode_all(ordered, _stored_size(size))
    n_train = len(split["train"])
    is_val = np.zeros(len(ordered), dtype=bool)
    is_val[n_train:] = True
    hist = channel_histogram(torch.from_numpy(decoded[:n_train]))  # later splits count only val
    arrays = dict(labels=np.array([lab for _, lab in split["train"] + split["val"]],
                                  dtype=np.int64),
                  is_val=is_val, classes=np.array(classes), image_size=np.array(size),
                  train_hist=hist.numpy(), files=np.array([n for n, _ in ordered]))
    stem = cache_stem(cache_dir, key_src, _stored_size(size))
    header = make_header(decoded, arrays, source=key_src, source_path=str(path),
                         auto_size=auto)
    save_cache(stem, decoded, arrays, header)
    return dict(arrays, images=decoded), stem


def _load_cached(cache_dir: Path, key_src: str, image_size: int | None
                 ) -> tuple[dict[str, np.ndarray] | None, Path | None]:
    """The valid cache entry for this source and size (None when there is none, with a
    warning when one exists but fails its checks), and its stem."""
    if image_size is None:  # the size chosen from the images, as the entries record it
        found = find_auto_entry(cache_dir, key_src, stacklevel=5)
        if found is None:
            return None, None
        stem, image_size = found
    else:
        stem = cache_stem(cache_dir, key_src, _stored_size(image_size))
    cached = load_cache(stem, key_src, stored_size=_stored_size(image_size),
                        image_size=image_size, stacklevel=5)
    return cached, stem


def load_path(spec: str, val_split: float | None, seed: int, image_size: int | None,
              cache_dir: Path, sha256: str | None) -> ImageData:
    """An `ImageData` from the ImageFolder folder or archive at the existing path `spec`
    (see `load_dataset`)."""
    path = Path(spec).expanduser()
    if path.is_file() and not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ValueError(f"data file {spec!r} is not an archive; use a folder or one of "
                         f"{', '.join(ARCHIVE_SUFFIXES)}")
    info: dict = {"source": str(path)}
    key_src, listing = _source_key(path, sha256, info)
    # a folder's layout is checked on every load (an empty class folder added after caching
    # changes no file); an archive's is fixed by its checksum, checked when it was decoded
    layout = _layout(listing[0], listing[1], str(path)) if listing is not None else None
    cached, stem = _load_cached(cache_dir, key_src, image_size)
    info["cache_hit"] = cached is not None
    if cached is None:
        old = [s for s in legacy_stems(cache_dir, path, key_src, image_size)
               if s.with_suffix(".npy").exists() or s.with_suffix(".npz").exists()]
        for s in old:
            warn_unused(s, "written by an older attnres (format 1, no header); it is removed",
                        stacklevel=4)
        cached, stem = _decode_source(path, listing, layout, image_size, cache_dir, key_src)
        for s in old:
            s.with_suffix(".npy").unlink(missing_ok=True)
            s.with_suffix(".npz").unlink(missing_ok=True)
    info["cache"] = str(stem.with_suffix(".npy"))
    images = torch.from_numpy(cached["images"])
    labels = torch.from_numpy(cached["labels"]).long()
    is_val = torch.from_numpy(cached["is_val"]).bool()
    classes = [str(c) for c in cached["classes"]]
    size = int(cached["image_size"])
    hist = torch.from_numpy(cached["train_hist"])
    # the cache keeps the training part first, so it is a view, not a copy
    n_train = int((~is_val).sum())
    val = (images[n_train:], labels[n_train:]) if n_train < labels.numel() else None
    train_images, train_labels = images[:n_train], labels[:n_train]
    for c in range(len(classes)):
        if not bool((train_labels == c).any()):
            raise ValueError(f"{path}: class {classes[c]!r} has no training images")
    return _finish(path.name, train_images, train_labels, classes, val_split, seed, size,
                   default_val=DEFAULT_VAL_SPLIT, val=val, info=info, hist=hist)


__all__ = ["ARCHIVE_SUFFIXES", "IMAGE_EXTENSIONS", "TRAIN_DIR_NAMES", "VAL_DIR_NAMES",
           "file_sha256", "load_path"]
