"""A run folder's rules: where it may be, when a new run may write into it, and one run at a
time.

- `check_folder_path`: a folder option (`out`, `cache_dir`) must name a folder that exists
  or can be made: not empty, no part of it a regular file, no name longer than the file
  system allows.
- `check_new_run`: a folder that holds any file of a run (`RUN_FILES`) is never written by a
  new run, only continued with `resume` or replaced with `overwrite`.
- `run_lock`: an exclusive `fcntl.flock` on `OUT/.lock` for the life of the run (POSIX
  systems; elsewhere the file is written but nothing is locked). The lock belongs to the
  open file, so the kernel drops it when the process ends in any way (even SIGKILL); a
  second run on the folder fails at once, naming the holder (pid, host, start time, read
  from the file). A `.lock` left by a killed run is simply taken over, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# what a run writes; a folder holding any of these holds a run
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "config.json", "summary.json")
LOCK_FILE = ".lock"
_NAME_MAX = 255   # bytes per file name on Linux, macOS and Windows file systems
_PATH_MAX = 4096  # bytes per path on Linux


class RunLockedError(RuntimeError):
    """The run folder is in use by another live run."""


def check_folder_path(value: str | os.PathLike, name: str) -> None:
    """ValueError unless `value` is a folder or could be made as one (nothing is made)."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{name}={value!r}: must be a folder path")
    if "\0" in text:
        raise ValueError(f"{name}={value!r}: a path cannot hold a NUL character")
    path = Path(text).expanduser()
    if len(os.fsencode(path)) > _PATH_MAX:
        raise ValueError(f"{name}: the path is {len(os.fsencode(path))} bytes long; the "
                         f"file system allows {_PATH_MAX}")
    for part in path.parts:
        if len(os.fsencode(part)) > _NAME_MAX:
            raise ValueError(f"{name}: the name {part[:40]!r}... is {len(os.fsencode(part))} "
                             f"bytes long; the file system allows {_NAME_MAX} per name")
    existing = path
    while not os.path.exists(existing) and existing != existing.parent:  # deepest part there
        if os.path.islink(existing):
            raise ValueError(f"{name}={text!r}: {str(existing)!r} is a broken symbolic link")
        existing = existing.parent
    if not os.path.isdir(existing):
        what = "is a file" if existing == path else f"is inside {str(existing)!r}, a file"
        raise ValueError(f"{name}={text!r} {what}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{name}={text!r}: {str(existing)!r} is not writable")


def run_files(out: Path) -> list[str]:
    """The files of `RUN_FILES` that `out` holds."""
    return [name for name in RUN_FILES if (out / name).exists()]


def check_new_run(out: Path, *, overwrite: bool) -> None:
    """ValueError when a new run would write into a folder that holds a run, unless
    `overwrite` (then `clear_run` removes that run's files once the lock is held)."""
    held = run_files(out)
    if not held or overwrite:
        return
    hint = (f"pass --resume {out} to continue it, --overwrite to replace it, or choose "
            f"another --out" if "last.pt" in held else
            "pass --overwrite to replace it, or choose another --out")
    raise ValueError(f"out={str(out)!r} already holds a run ({', '.join(held)}); {hint}")


def clear_run(out: Path) -> None:
    """`overwrite`: remove the previous run's files and TensorBoard events, so that the
    folder describes one run only (other files, e.g. eval/, are left alone)."""
    for name in RUN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    for events in out.glob("events.out.tfevents.*"):
        with contextlib.suppress(FileNotFoundError):
            events.unlink()


def _holder(path: Path) -> dict:
    """What the lock file says about the run that holds it ({} if unreadable)."""
    for _ in range(20):  # the holder writes it right after locking; wait a moment for it
        try:
            text = path.read_text(encoding="utf-8")
        except OSError:
            return {}
        if text.strip():
            try:
                return dict(json.loads(text))
            except (ValueError, TypeError):
                return {}
        time.sleep(0.025)
    return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    started = holder.get("started")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started))
            if isinstance(started, (int, float)) else "?")
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


def _acquire(path: Path) -> tuple[int, dict]:
    """An open descriptor holding the lock on `path`, and what a dead holder left in it."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: the file says who runs, nothing is locked
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644), {}
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)  # again, if a failed run removed it
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise RunLockedError(
                f"out={str(path.parent)!r} is in use by another run ({_describe(_holder(path))}"
                f"); wait for it to end, or choose another --out") from None
        try:  # its holder may have removed the file between our open and flock: again
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, (_holder(path) if os.fstat(fd).st_size else {})
        os.close(fd)


def _missing_parts(out: Path) -> list[Path]:
    """`out` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not os.path.exists(out) and out != out.parent:
        missing.append(out)
        out = out.parent
    return missing


@contextlib.contextmanager
def run_lock(out: Path, *, warn: bool = True) -> Iterator[None]:
    """Hold the exclusive lock on `out` (made if missing) while inside. On the way out the
    lock file is removed, and the folders this made when the run left them empty."""
    made = _missing_parts(out)
    path = out / LOCK_FILE
    fd, stale = _acquire(path)
    try:
        if stale and warn:
            print(f"warning: {out}: taking over the lock of a run that is gone "
                  f"({_describe(stale)})", file=sys.stderr)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: nobody else can be holding this file
        os.close(fd)
        for folder in made:  # only empty ones: a run that failed before writing anything
            try:
                folder.rmdir()
            except OSError:
                break


@contextlib.contextmanager
def claim_run_folder(out: Path, *, new_run: bool, overwrite: bool) -> Iterator[None]:
    """The folder rules for one run, while inside: a new run may not write over a run
    (unless `overwrite`, which clears it), and rank 0 of the run holds the folder's lock
    (other DDP ranks write nothing, so they only check)."""
    if new_run:
        check_new_run(out, overwrite=overwrite)  # before anything is made
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with run_lock(out):
        if new_run:
            check_new_run(out, overwrite=overwrite)  # again: a run may have begun meanwhile
            if overwrite:
                clear_run(out)
        yield


__all__ = ["LOCK_FILE", "RUN_FILES", "RunLockedError", "check_folder_path", "check_new_run",
           "claim_run_folder", "clear_run", "run_files", "run_lock"]
