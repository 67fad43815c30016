"""Ctrl-C: the first one stops a run cleanly, a second one quits at once.

* :func:`sigint_guard` (the CLI, around every command): the first Ctrl-C or SIGTERM raises
  ``KeyboardInterrupt``; a second one ends every child process and exits with status 130 at
  once, without a traceback.
* :func:`graceful_stop` (around an in-process simulation): the first Ctrl-C sets a stop event
  instead, so the ServerApp stops at its next poll (:class:`~fedpriv.runs.stoppable.StoppableGrid`)
  and Flower's simulation engine winds down by itself, which leaves no thread waiting on a Ray
  that is gone; if it has not ended within ``grace`` seconds, ``KeyboardInterrupt`` is raised in
  the main thread after all. The checkpoint of the last complete round stays the restart point.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED",
    "graceful_stop",
    "hard_exit",
    "kill_children",
    "reap",
    "sigint_guard",
]

EXIT_INTERRUPTED = 130
MESSAGE = "interrupted: stopping the run (Ctrl-C again to quit at once)"
_cli = {"hard_exit_on_second": False}


def kill_children() -> None:
    """SIGKILL every live descendant of this process (the last resort of a second Ctrl-C)."""
    from fedpriv.deploy.processes import descendants

    for pid in descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def hard_exit() -> None:
    """Kill the children and exit 130 now (no cleanup, no traceback)."""
    print("quitting now", file=sys.stderr, flush=True)
    kill_children()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def _install(handler: Any) -> dict[int, Any]:
    old: dict[int, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        return old  # signals belong to the main thread: leave them alone
    for sig in (signal.SIGINT, signal.SIGTERM):
        old[sig] = signal.signal(sig, handler)
    return old


def _restore(old: dict[int, Any]) -> None:
    for signum, h in old.items():
        signal.signal(signum, h)


@contextlib.contextmanager
def sigint_guard(message: str = MESSAGE) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: print ``message`` and raise ``KeyboardInterrupt``; a second
    one: :func:`hard_exit`. Restores the old handlers afterwards."""
    count = {"n": 0}

    def handler(_sig: int, _frame: FrameType | None) -> None:
        count["n"] += 1
        if count["n"] > 1:
            hard_exit()
        print(f"\n{message}", file=sys.stderr, flush=True)
        raise KeyboardInterrupt

    old = _install(handler)
    _cli["hard_exit_on_second"] = True
    try:
        yield
    finally:
        _cli["hard_exit_on_second"] = False
        _restore(old)


@contextlib.contextmanager
def graceful_stop(
    stop: threading.Event,
    *,
    grace: float = 7.0,
    on_stop: Callable[[], None] | None = None,
) -> Iterator[None]:
    """First Ctrl-C or SIGTERM: call ``on_stop``, set ``stop``; ``KeyboardInterrupt`` in the
    main thread if the block is still running ``grace`` seconds later. Second: :func:`hard_exit`
    under the CLI, ``KeyboardInterrupt`` at once otherwise (a notebook kernel must survive)."""
    count = {"n": 0}
    escalate = {"now": False}
    timer: list[threading.Timer] = []

    def _deadline() -> None:
        escalate["now"] = True
        _thread.interrupt_main(signal.SIGINT)

    def handler(_sig: int, _frame: FrameType | None) -> None:
        if escalate["now"]:
            escalate["now"] = False
            raise KeyboardInterrupt
        count["n"] += 1
        if count["n"] > 1:
            if _cli["hard_exit_on_second"]:
                hard_exit()
            raise KeyboardInterrupt
        print(f"\n{MESSAGE}", file=sys.stderr, flush=True)
        if on_stop is not None:
            on_stop()
        stop.set()
        t = threading.Timer(grace, _deadline)
        t.daemon = True
        t.start()
        timer.append(t)

    old = _install(handler)
    try:
        yield
    finally:
        for t in timer:
            t.cancel()
        _restore(old)


def reap(pids: list[int], *, timeout: float = 3.0) -> list[int]:
    """Wait up to ``timeout`` for ``pids`` to exit, SIGKILL the rest; return those killed.

    For the processes a run started (Ray's workers) that may outlive the run's shutdown once
    their parent is gone: remember them while they are still descendants, reap them after.
    """
    import time

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
                return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    killed = [p for p in pids if alive(p)]
    for pid in killed:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return killed
