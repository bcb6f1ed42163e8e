"""Stopping a run cleanly on SIGINT / SIGTERM: the loop saves `last.pt` before it exits."""

from __future__ import annotations

import signal
from typing import Any

from ..interrupts import Interrupted


class StopRequest:
    """SIGINT or SIGTERM sets a flag that the loop checks between steps (a second one aborts
    at once). SIGTERM counts too: torchrun passes Ctrl-C on to its workers as SIGTERM, and
    batch schedulers send it before they kill a job."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)  # the signal that asked, once one has
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        try:
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Interrupted(signum)
        self.requested = True
        self.signum = int(signum)

    def interrupted(self) -> Interrupted:
        """The exception the loop raises once it has saved: it says which signal asked
        (the CLI exits 130 for SIGINT, 143 for SIGTERM)."""
        return Interrupted(self.signum)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


__all__ = ["StopRequest"]
