"""Where every image of a large data set is, without its pixels: folders, tar archives and
folders of tar shards, listed once and cached as a small JSON (names, labels, byte offsets).

Layouts, with the ImageFolder rules of the in-memory path (`folder._layout`):
- a folder `root/<class>/<image>` or `root/train|val/<class>/<image>`;
- a plain `.tar` holding that layout: indexed by member offsets, each image read with one
  `os.pread` (no extraction, any worker, any order);
- a compressed archive (`.tar.gz`, `.tgz`, `.tar.bz2`, `.tar.xz`): gzip cannot seek, so it is
  decompressed once into the cache folder as one plain `.tar` (about the archive's size: JPEG
  bytes barely compress) and then read like a plain `.tar`;
- a folder of `*.tar` shards and nothing else at its top level (sorted by name): every shard
  holds members `<class>/<image>` (or `train|val/<class>/<image>`), the union of all shards is
  one ImageFolder, and a member path may appear in one shard only.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import atomic_write
from .cache import default_cache_dir
from .decode import _probe_size
from .folder import ARCHIVE_SUFFIXES, _expected_sha256, _layout, _scan_folder, file_sha256
from .records import Records
from .tars import DECOMPRESSORS, Entry, decompress, index_tar

LISTING_VERSION = 1


@dataclass
class Listing:
    """A listed data source: its classes, the training records, the given validation records
    (`root/val/...`, else None), the most common image side, and the JSON it is cached in.

    `fingerprint`: sha256 of the classes and every image's name, label and size (not of where
    the bytes sit, so a re-packed archive keeps it): a run records it to notice when a resumed
    run's data changed.
    """

    source: str
    layout: str  # "folder", "tar", "compressed" or "shards"
    classes: list[str]
    train: Records
    val: Records | None
    common_side: int | None
    fingerprint: str
    path: Path
    memo: dict = field(default_factory=dict)  # small derived values (statistics), by key

    @property
    def num_images(self) -> int:
        return len(self.train) + (len(self.val) if self.val is not None else 0)

    def memoized(self, key: str, compute: Callable[[], object]) -> object:
        """A small derived value (e.g. channel statistics) kept in the listing's JSON: computed
        once, by one process of the machine, while the others wait and then read it."""
        if key not in self.memo:
            with _locked(self.path.parent):
                stored = json.loads(self.path.read_text())
                memo = stored.setdefault("memo", {})
                if key not in memo:
                    memo[key] = compute()
                    atomic_write(self.path, json.dumps(stored, separators=(",", ":")) + "\n")
                self.memo[key] = memo[key]
        return self.memo[key]


def _detect(path: Path) -> str:
    if path.is_file():
        name = path.name.lower()
        if name.endswith(".tar"):
            return "tar"
        if name.endswith(tuple(DECOMPRESSORS)):
            return "compressed"
        raise ValueError(f"data file {str(path)!r} is not an archive; use a folder or one of "
                         f"{', '.join(ARCHIVE_SUFFIXES)}")
    top = [p for p in path.iterdir() if not p.name.startswith(".")]
    shards = [p for p in top if p.is_file() and p.name.lower().endswith(".tar")]
    if not shards:
        return "folder"
    others = [p.name for p in top if p not in shards]
    if others:
        raise ValueError(f"{path}: holds .tar shards and other entries "
                         f"({', '.join(sorted(others)[:3])}); a shard folder holds only "
                         f"*.tar files")
    return "shards"


def _shard_paths(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir()
                  if not p.name.startswith(".") and p.name.lower().endswith(".tar"))


def _stamp(path: Path, layout: str, dirs: Sequence[str] = ()) -> dict[str, list[int]]:
    """What must not change for a cached listing to stay valid: sizes and mtimes of archive
    files; for folders the mtimes of the root and of every listed folder (adding, removing
    or renaming an image changes its folder's mtime; rewriting a file in place does not)."""
    if layout == "folder":
        keys = [".", *dirs]
    elif layout == "shards":
        keys = [".", *(p.name for p in _shard_paths(path))]
    else:
        keys = ["."]
    return {k: list(_stamp_entry(path, k)) for k in keys}


def _stamp_entry(path: Path, key: str) -> tuple[int, int]:
    p = path if key == "." else path / key
    s = p.stat()
    return (s.st_size if p.is_file() else 0, s.st_mtime_ns)


def _stamp_still(path: Path, stamp: dict[str, list[int]]) -> bool:
    try:
        return all(list(_stamp_entry(path, k)) == v for k, v in stamp.items())
    except OSError:
        return False


def _entries(path: Path, layout: str, cache_dir: Path, expected: str | None, info: dict
             ) -> tuple[list[str], list[Entry], list[str], list[str]]:
    """(sources, image entries in source order, folders, skipped names) of `path`."""
    if layout == "folder":
        files, dirs, skipped = _scan_folder(path)
        entries = [(f, 0, -1, (path / f).stat().st_size) for f in files]
        return [str(path)], entries, dirs, skipped
    if layout == "shards":
        sources, entries, dirs, skipped, seen = [], [], set(), [], set()
        for s, shard in enumerate(_shard_paths(path)):
            got, got_dirs, got_skipped = index_tar(shard, str(shard), s)
            clash = [e[0] for e in got if e[0] in seen][:3]
            if clash:
                raise ValueError(f"{path}: member(s) {', '.join(clash)} appear in more than "
                                 f"one shard ({shard.name} and an earlier one)")
            seen.update(e[0] for e in got)
            sources.append(str(shard))
            entries += got
            dirs |= got_dirs
            skipped += got_skipped
        return sources, entries, sorted(dirs), skipped
    tar_path = path
    if layout == "compressed":
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
        tar_path = cache_dir / f"{path.name.split('.')[0] or 'data'}-{key.hexdigest()[:16]}.tar"
        info["sha256"] = decompress(path, tar_path, expected)
        info["decompressed"] = str(tar_path)
    elif expected is not None:
        info["sha256"] = file_sha256(path)
        if info["sha256"] != expected:
            raise ValueError(f"archive {path} has sha256 {info['sha256']}, expected {expected} "
                             f"(the file is damaged or not the one you meant)")
    entries, dirs, skipped = index_tar(tar_path, str(path), 0)
    return [str(tar_path)], entries, sorted(dirs), skipped


def _common_side(records_in_order: Records) -> int | None:
    """min(w, h) of the most common image size among up to ~200 evenly spaced images, probed
    from headers in source order: the same sample and rule as the in-memory path."""
    n = len(records_in_order)
    sizes = Counter(s for s in (_probe_size(records_in_order.read(i))
                                for i in range(0, n, max(1, n // 200))) if s is not None)
    if not sizes:
        return None
    (w, h), _ = sizes.most_common(1)[0]
    return min(w, h)


def _encode(records: Records) -> dict:
    """Columns as compact JSON: names joined by newlines, numbers as base64 int64."""
    def b64(a: np.ndarray) -> str:
        return base64.b64encode(a.astype("<i8").tobytes()).decode("ascii")

    return {"count": len(records), "names": "\n".join(records.names()),
            "labels": b64(records.labels), "source": b64(records.source),
            "offset": b64(records.offset), "size": b64(records.size)}


def _decode(sources: list[str], part: dict) -> Records:
    def ints(key: str) -> np.ndarray:
        return np.frombuffer(base64.b64decode(part[key]), dtype="<i8").astype(np.int64)

    n = int(part["count"])
    blob = np.frombuffer(part["names"].encode("utf-8"), dtype=np.uint8)
    breaks = np.flatnonzero(blob == ord("\n"))
    if breaks.size != max(n - 1, 0):
        raise ValueError(f"{breaks.size + 1} names for {n} images")
    start = np.concatenate([[0], breaks + 1, [blob.size + 1]]) if n else np.zeros(1)
    keep = np.ones(blob.size, dtype=bool)
    keep[breaks] = False
    start = start - np.arange(start.size)  # positions once the newlines are dropped
    cols = [ints(k) for k in ("source", "offset", "size", "labels")]
    if any(c.size != n for c in cols):
        raise ValueError(f"columns of different lengths for {n} images")
    return Records(sources, blob[keep], start, *cols)


def _fingerprint(classes: list[str], splits: dict) -> str:
    h = hashlib.sha256(json.dumps(classes).encode())
    for split in ("train", "val"):
        part = splits.get(split)
        if part:
            h.update(f"\0{split}\0{part['names']}\0{part['labels']}\0{part['size']}".encode())
    return h.hexdigest()


@contextmanager
def _locked(folder: Path):
    """An exclusive lock on `folder` (flock on the folder itself: no lock file), so the
    processes of one run on one machine list a source once and the others wait for it."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _from_json(stored: dict, path: Path) -> Listing:
    sources = stored["sources"]
    splits = stored["splits"]
    return Listing(source=stored["source"], layout=stored["layout"],
                   classes=list(stored["classes"]),
                   train=_decode(sources, splits["train"]),
                   val=_decode(sources, splits["val"]) if splits.get("val") else None,
                   common_side=stored["common_side"], fingerprint=stored["fingerprint"],
                   path=path, memo=dict(stored.get("memo", {})))


def _load_listing(json_path: Path, path: Path, expected: str | None) -> Listing | None:
    """The cached listing when it exists, is intact and still describes `path`."""
    try:
        stored = json.loads(json_path.read_text())
        if stored.get("version") != LISTING_VERSION or not _stamp_still(path, stored["stamp"]):
            return None
        if _fingerprint(stored["classes"], stored["splits"]) != \
                stored["fingerprint"]:
            raise ValueError("fingerprint does not match its content")
        if stored["layout"] == "compressed" and not Path(stored["sources"][0]).is_file():
            return None  # the decompressed copy was removed: make it again
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as e:
        warnings.warn(f"ignoring unreadable listing {json_path} ({e})", stacklevel=4)
        return None
    if expected is not None and stored.get("sha256") not in (None, expected):
        raise ValueError(f"archive {path} has sha256 {stored['sha256']}, expected {expected} "
                         f"(the file is damaged or not the one you meant)")
    if expected is not None and stored.get("sha256") is None:
        return None  # never checked: list again, checking this time
    return _from_json(stored, json_path)


def _build_listing(path: Path, layout: str, cache_dir: Path, expected: str | None,
                   json_path: Path) -> Listing:
    info: dict = {}
    sources, entries, dirs, skipped = _entries(path, layout, cache_dir, expected, info)
    skipped += [e[0] for e in entries if "\n" in e[0]]  # the JSON separates names by newlines
    entries = [e for e in entries if "\n" not in e[0]]
    if skipped:
        warnings.warn(f"{path}: ignored {len(skipped)} non-image file(s), e.g. "
                      f"{', '.join(skipped[:3])}", stacklevel=4)
    by_name = {e[0]: e for e in entries}
    classes, splits = _layout([e[0] for e in entries], dirs, str(path))
    in_order = Records.from_names(sources, *zip(*entries), np.zeros(len(entries)))
    common_side = _common_side(in_order)
    columns = {}
    for split, items in splits.items():
        if items:
            chosen = [by_name[name] for name, _ in items]
            columns[split] = _encode(Records.from_names(
                sources, *zip(*chosen), [lab for _, lab in items]))
    stored = {"format": "attnres-listing", "version": LISTING_VERSION, "source": str(path),
              "layout": layout, "sources": sources,
              "stamp": _stamp(path, layout, dirs if layout == "folder" else ()),
              "classes": classes, "common_side": common_side, **info,
              "fingerprint": _fingerprint(classes, columns), "splits": columns}
    atomic_write(json_path, json.dumps(stored, separators=(",", ":")) + "\n")
    return _from_json(stored, json_path)


def list_source(spec: str | Path, *, cache_dir: str | Path | None = None,
                sha256: str | None = None, refresh: bool = False) -> Listing:
    """List the folder, archive or shard folder at `spec` once; later calls read the cached
    JSON (`cache_dir/<name>-<hash of the path>.listing.json`) while the source's stamp
    (archive sizes and mtimes, folder mtimes) is unchanged, or list again with `refresh`.

    sha256: the archive's expected checksum (also read from a `<archive>.sha256` sidecar);
    checked when listing and kept in the JSON. Raises ValueError on unusable sources.
    """
    path = Path(spec).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data path {str(spec)!r} does not exist")
    layout = _detect(path)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    expected = _expected_sha256(path, sha256) if path.is_file() else None
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    json_path = cache / f"{path.name.split('.')[0] or 'data'}-{key}.listing.json"
    with _locked(cache):
        listing = None if refresh else _load_listing(json_path, path, expected)
        return listing if listing is not None else _build_listing(path, layout, cache,
                                                                  expected, json_path)


__all__ = ["LISTING_VERSION", "Listing", "Records", "list_source"]
