"""The one place where the command line turns failures into exit statuses.

Expected failures (bad input, a missing or unusable file, a run folder in use, a run whose
loss or weights stopped being finite) print `attnres CMD: error: MESSAGE` on one line and
exit with status 2; SIGINT exits 130 and SIGTERM 143 after `attnres CMD: interrupted`.
Anything else is a bug: it keeps its traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UsageError(Exception):
    """Bad input from the user: printed as one line, exit status 2."""


def expected_errors() -> tuple[type[BaseException], ...]:
    """The exception types that are the user's to fix, not bugs (imported when needed, so
    that `attnres --help` stays light)."""
    from ..checkpoint import CheckpointError
    from ..training.config import NonFiniteLossError
    from ..training.run_folder import RunLockedError

    return (UsageError, ValueError, CheckpointError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError, RunLockedError, NonFiniteLossError)


def message(error: BaseException) -> str:
    """The error's text (a KeyError's key without its quotes), on one line."""
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    return text or type(error).__name__


def run_command(prog: str, func: Callable[[], int | None]) -> int:
    """Call `func`; its status, or 2 / 130 / 143 with one line on stderr starting `prog`
    (e.g. "attnres train")."""
    from ..interrupts import exit_status

    expected = expected_errors()
    try:
        return int(func() or 0)
    except KeyboardInterrupt as e:  # Interrupted too (SIGTERM)
        print(f"{prog}: interrupted", file=sys.stderr)
        return exit_status(e)
    except expected as e:
        print(f"{prog}: error: {message(e)}", file=sys.stderr)
        return 2


__all__ = ["UsageError", "expected_errors", "message", "run_command"]
