"""`Records`: where each image's bytes are (a file, or an offset and size inside a plain tar),
kept in numpy arrays so that a listing of a million images stays small and pickles quickly
to DataLoader workers."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class Records:
    """The images of one split: `sources[source[i]]` is a folder (the image is the file
    `folder/name(i)`) or a tar file (`size[i]` bytes at `offset[i]`); `labels` int64 `(N,)`.

    Only numpy arrays, no per-image Python objects, so forked loader workers share them
    instead of copying them page by page.
    """

    def __init__(self, sources: Sequence[str], names_blob: np.ndarray, name_start: np.ndarray,
                 source: np.ndarray, offset: np.ndarray, size: np.ndarray,
                 labels: np.ndarray) -> None:
        self.sources = list(sources)
        self.names_blob = np.asarray(names_blob, dtype=np.uint8)  # UTF-8 names back to back
        self.name_start = np.asarray(name_start, dtype=np.int64)  # (N + 1,) into the blob
        self.source = np.asarray(source, dtype=np.int32)
        self.offset = np.asarray(offset, dtype=np.int64)
        self.size = np.asarray(size, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self._fds: dict[int, int] = {}

    @classmethod
    def from_names(cls, sources: Sequence[str], names: Sequence[str], source: Sequence[int],
                   offset: Sequence[int], size: Sequence[int], labels: Sequence[int]
                   ) -> Records:
        encoded = [n.encode("utf-8") for n in names]
        start = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=start[1:])
        return cls(sources, np.frombuffer(b"".join(encoded), dtype=np.uint8), start,
                   np.array(source, dtype=np.int32), np.array(offset, dtype=np.int64),
                   np.array(size, dtype=np.int64), np.array(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def name(self, i: int) -> str:
        """The image's path inside its folder or archive."""
        return self.names_blob[self.name_start[i]:self.name_start[i + 1]].tobytes().decode()

    def names(self) -> list[str]:
        return [self.name(i) for i in range(len(self))]

    def where(self, i: int) -> str:
        """`source/name` (or `archive:name`) for messages."""
        src = self.sources[self.source[i]]
        return f"{src}/{self.name(i)}" if self.offset[i] < 0 else f"{src}:{self.name(i)}"

    def read(self, i: int) -> bytes:
        """The encoded bytes of image `i` (safe in any process: `pread` keeps no position)."""
        s = int(self.source[i])
        if self.offset[i] < 0:
            return (Path(self.sources[s]) / self.name(i)).read_bytes()
        fd = self._fds.get(s)
        if fd is None:
            fd = self._fds[s] = os.open(self.sources[s], os.O_RDONLY)
        size, offset, parts = int(self.size[i]), int(self.offset[i]), []
        while size > 0:  # pread may return fewer bytes than asked (network file systems)
            part = os.pread(fd, size, offset)
            if not part:
                raise ValueError(f"{self.where(i)}: archive ended early (truncated?)")
            parts.append(part)
            size, offset = size - len(part), offset + len(part)
        return b"".join(parts)

    def select(self, idx: Sequence[int] | np.ndarray) -> Records:
        """The records at positions `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.name_start[idx + 1] - self.name_start[idx]
        start = np.zeros(idx.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=start[1:])
        # byte k of the new blob comes from old position (old start - new start) + k
        gather = np.repeat(self.name_start[idx] - start[:-1], lengths) + np.arange(start[-1])
        return Records(self.sources, self.names_blob[gather], start, self.source[idx],
                       self.offset[idx], self.size[idx], self.labels[idx])

    def __getstate__(self) -> dict:  # open files do not travel to spawned workers
        return dict(self.__dict__, _fds={})

    def close(self) -> None:
        for fd in getattr(self, "_fds", {}).values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        self.close()
