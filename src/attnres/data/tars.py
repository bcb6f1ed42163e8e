"""Tar archives without extraction: an index of a plain tar's image members (name, data
offset, size) read from the headers alone, and one-pass decompression of a `.tar.gz`,
`.tar.bz2` or `.tar.xz` into a plain tar (compressed streams cannot seek)."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import shutil
import tarfile
import zlib
from pathlib import Path

from ..utils import atomic_write
from .folder import _is_image, member_path, parent_folders

DECOMPRESSORS = {".tar.gz": gzip.GzipFile, ".tgz": gzip.GzipFile, ".tar.bz2": bz2.BZ2File,
                 ".tar.xz": lzma.LZMAFile}
Entry = tuple[str, int, int, int]  # name, source index, byte offset (-1: a file), size


def index_tar(tar_path: Path, where: str, source: int
               ) -> tuple[list[Entry], set[str], list[str]]:
    """Image members of a plain tar with their data offsets, plus folders and skipped names;
    reads only the headers. Truncated or corrupt archives raise ValueError naming `where`."""
    entries: list[Entry] = []
    dirs: set[str] = set()
    skipped: list[str] = []
    end = tar_path.stat().st_size
    try:
        with tarfile.open(tar_path, mode="r:") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()  # millions of members: keep memory flat
                name = member_path(member.name)
                if not name:
                    continue
                dirs.update(parent_folders(name))
                if member.isdir():
                    dirs.add(name)
                elif not member.isfile() or name.rpartition("/")[2].startswith("."):
                    continue
                elif not _is_image(name) or member.issparse():
                    skipped.append(name)
                elif member.offset_data + member.size > end:
                    raise ValueError(f"archive {where} is truncated or corrupt ({name} ends "
                                     f"past the end of the file)")
                else:
                    entries.append((name, source, member.offset_data, member.size))
    except (tarfile.TarError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else "read error"
        raise ValueError(f"archive {where} is truncated or corrupt ({type(e).__name__}: "
                         f"{reason})") from None
    return entries, dirs, skipped


class _HashingReader:
    """A read-only file wrapper that hashes what passes through it."""

    def __init__(self, f) -> None:
        self.f, self.hash = f, hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.hash.update(data)
        return data


def decompress(path: Path, dest: Path, expected: str | None) -> str:
    """Write the plain tar inside compressed `path` to `dest` in one pass; return the
    compressed file's sha256 (checked against `expected` before `dest` appears)."""
    opener = DECOMPRESSORS[next(s for s in DECOMPRESSORS if path.name.lower().endswith(s))]
    digest: list[str] = []
    with open(path, "rb") as raw:
        reader = _HashingReader(raw)

        def copy(out) -> None:
            with opener(fileobj=reader, mode="rb") as plain:
                shutil.copyfileobj(plain, out, 1 << 20)
            reader.read()  # trailing bytes count towards the checksum too
            digest.append(reader.hash.hexdigest())

        def check(_tmp: str) -> None:
            if expected is not None and expected != digest[0]:
                raise ValueError(f"archive {path} has sha256 {digest[0]}, expected {expected} "
                                 f"(the file is damaged or not the one you meant)")

        try:
            atomic_write(dest, copy, check=check)
        except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
            reason = str(e).splitlines()[0] if str(e) else "read error"
            raise ValueError(f"archive {path} is truncated or corrupt ({type(e).__name__}: "
                             f"{reason})") from None
    return digest[0]


__all__ = ["DECOMPRESSORS", "decompress", "index_tar"]
