"""SIGINT and SIGTERM as exceptions: `Interrupted` carries the signal, so the command line
can exit with the shell's status for it (130 for SIGINT, 143 for SIGTERM).

The command line is covered from its first moment: `attnres/__init__.py` calls
`guard_cli_start()` before it imports torch, which (only when the process was started as
`attnres ...` or `python -m attnres ...`) makes a signal during the imports end the process
at once with one line and the status of the signal (nothing has been written yet). `main()`
then replaces that with `raising_signals()`, under which a signal raises `Interrupted`,
which its handler prints as one line. The training loop stops cleanly on its own handler
(`attnres.training.signals.StopRequest`) and raises `Interrupted` once `last.pt` is saved.

This module sits below `attention` in the import order: it imports nothing from attnres.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; `exit_status` is the shell's status for it (128 + signal)."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        self.signum = int(signum)
        super().__init__(signal.Signals(self.signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def exit_status(error: BaseException) -> int:
    """130 for Ctrl-C (a plain KeyboardInterrupt too), 143 for SIGTERM."""
    return error.exit_status if isinstance(error, Interrupted) else 128 + signal.SIGINT


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def _install(handler: Any) -> dict[int, Any]:
    """Set `handler` for SIGINT and SIGTERM; the handlers it replaced (none off the main
    thread, where Python cannot set handlers)."""
    previous: dict[int, Any] = {}
    try:
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, handler)
    except ValueError:  # not the main thread
        pass
    return previous


@contextlib.contextmanager
def raising_signals() -> Iterator[None]:
    """Inside: SIGINT and SIGTERM raise `Interrupted`; the previous handlers afterwards."""
    previous = _install(_raise)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def started_as_cli() -> bool:
    """Whether this process is the `attnres` command: `python -m attnres ...` (while Python
    locates the module, `sys.argv[0]` is "-m") or the `attnres` console script."""
    if sys.argv[:1] == ["-m"]:
        argv = [*sys.orig_argv, ""]
        for i, arg in enumerate(argv[1:-1], 1):
            if arg.startswith("-m"):  # "-m" then the module, or "-mattnres"
                return (arg[2:] or argv[i + 1]).split(".")[0] == "attnres"
        return False
    return bool(sys.argv) and Path(sys.argv[0]).name in ("attnres", "attnres.exe")


def _exit_now(signum: int, frame: Any) -> None:
    # while the command is still importing: nothing is written yet, so nothing to clean up
    os.write(2, b"attnres: interrupted\n")
    os._exit(128 + signum)


def guard_cli_start() -> None:
    """When this process is the `attnres` command, a signal before `main()` takes over ends
    it at once: one line on stderr and status 128 + signal, no traceback."""
    if started_as_cli():
        _install(_exit_now)


__all__ = ["Interrupted", "exit_status", "guard_cli_start", "raising_signals",
           "started_as_cli"]
