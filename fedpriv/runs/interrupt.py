"""Ctrl-C: the first one stops a run cleanly, a second one quits at once.

:func:`sigint_guard`: the first Ctrl-C (or SIGTERM) raises ``KeyboardInterrupt`` so the run
stops cleanly (see :class:`fedpriv.runs.stoppable.StoppableGrid` for the server side); a second
one ends every child process and exits with status 130 at once, without a traceback.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from types import FrameType
from typing import Any

__all__ = ["EXIT_INTERRUPTED", "kill_children", "sigint_guard"]

EXIT_INTERRUPTED = 130


def kill_children() -> None:
    """SIGKILL every live descendant of this process (the last resort of a second Ctrl-C)."""
    from fedpriv.deploy.processes import descendants

    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def sigint_guard(
    message: str = "interrupted: stopping the run (Ctrl-C again to quit at once)",
) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: print ``message`` and raise ``KeyboardInterrupt``; a second
    one: kill the children and exit 130 at once. Restores the old handlers afterwards."""
    count = {"n": 0}

    def handler(_sig: int, _frame: FrameType | None) -> None:
        count["n"] += 1
        if count["n"] == 1:
            print(f"\n{message}", file=sys.stderr, flush=True)
            raise KeyboardInterrupt
        print("quitting now", file=sys.stderr, flush=True)
        kill_children()
        os._exit(EXIT_INTERRUPTED)

    old: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for signum, h in old.items():
            signal.signal(signum, h)
