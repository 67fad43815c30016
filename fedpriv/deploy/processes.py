"""Starting, watching and stopping Flower's own processes.

Every long-running child (``flower-superlink``, ``flower-supernode``) is started so that it
cannot outlive the fedpriv command that started it: it stays in the caller's process group
(a Ctrl-C or a ``kill -- -PGID`` reaches it), gets ``PR_SET_PDEATHSIG`` on Linux (it is sent
SIGTERM if fedpriv dies, even by SIGKILL), and :meth:`ManagedProcess.stop` ends it and then
every process left in the same session that descends from it (Flower's ``flower-superexec``,
``flwr-serverapp`` and ``flwr-clientapp`` children).

The ``flwr`` CLI itself is driven through :class:`fedpriv.runs.flwr_cli.FlwrCli`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from fedpriv.errors import ConfigError, FedprivError

__all__ = [
    "ManagedProcess",
    "descendants",
    "flower_exe",
    "free_port",
    "parse_address",
    "serve",
    "supervise",
    "wait_for_port",
    "wait_for_unix_socket",
]

_PR_SET_PDEATHSIG = 1


def flower_exe(name: str) -> str:
    """Path of one of Flower's executables, next to this Python first, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FedprivError(
            f"{name} not found: install Flower in this environment (pip install flwr==1.42.0)"
        )
    return found


def parse_address(text: str, *, default_port: int | None = None) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` for IPv6); raise ConfigError with the expected form."""
    text = text.strip()
    host, sep, port_s = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ConfigError(f"address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
        host, port_s = text, str(default_port)
    host = host.strip("[]")
    try:
        port = int(port_s)
    except ValueError:
        raise ConfigError(f"address {text!r}: port {port_s!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise ConfigError(f"address {text!r}: expected HOST:PORT with a port in 1..65535")
    return host, port


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for per-node Runtime API ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, alive: Callable[[], bool] | None = None
) -> bool:
    """Poll until a TCP connection to ``host:port`` succeeds; False on timeout or if not ``alive``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def wait_for_unix_socket(
    path: Path, timeout: float, alive: Callable[[], bool] | None = None
) -> bool:
    """Poll until a connection to the unix socket ``path`` succeeds; False on timeout or if not
    ``alive``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.settimeout(1.0)
                s.connect(str(path))
                return True
            except OSError:
                pass
        time.sleep(0.2)
    return False


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    proc = Path("/proc")
    if not proc.exists():
        return []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # field 4 (after the parenthesized command, which may hold spaces) is the parent pid
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) > 2:
            children.setdefault(int(rest[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


class ManagedProcess:
    """One Flower process with its log file; stopped with all its descendants."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log_path: Path,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_path
        self.cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: TextIO | None = None
        self._known: dict[int, str] = {}  # descendants seen so far -> their start time

    def remember_descendants(self) -> None:
        """Note the current descendants, so :meth:`stop` finds them even after they were
        orphaned (a Flower process whose parent already exited)."""
        if self.alive():
            for pid in descendants(self.pid):
                start = _start_time(pid)
                if start:
                    self._known.setdefault(pid, start)

    @property
    def pid(self) -> int:
        """The process id (after :meth:`start`)."""
        assert self._proc is not None
        return self._proc.pid

    def start(self) -> ManagedProcess:
        """Start the process (output appended to ``log_path``)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "a", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self._log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(self.argv)}\n")
        self._log.flush()
        self._proc = subprocess.Popen(
            self.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            cwd=self.cwd,
            preexec_fn=_set_pdeathsig,
        )
        return self

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """Exit status, or None while running."""
        return None if self._proc is None else self._proc.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for exit and return the exit status."""
        assert self._proc is not None
        return self._proc.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the log (for error messages)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 10.0, *, grace: float = 0.0) -> int | None:
        """Stop the process, then whatever of its descendants is left.

        The leader gets one SIGTERM (Flower's processes shut down cleanly on it: a SuperNode
        deactivates itself at the SuperLink, which a second signal during that exit would
        interrupt); descendants still running after it exited get SIGTERM, and anything alive
        after ``timeout`` gets SIGKILL.

        Parameters
        ----------
        timeout : float
            Seconds to wait for a clean exit.
        grace : float
            Seconds to wait first without signalling (when a Ctrl-C or a group signal already
            reached the process).
        """
        if self._proc is None:
            return None
        self.remember_descendants()
        # descendants seen earlier that still run (same start time: not a reused pid)
        orphans = [p for p, t in self._known.items() if _start_time(p) == t]
        pids = [self._proc.pid, *descendants(self._proc.pid)] if self.alive() else []
        pids = [*pids, *(p for p in orphans if p not in pids)]
        rc: int | None = None
        if grace > 0 and self.alive():
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self._proc.wait(grace)
        deadline = time.monotonic() + timeout
        if self.alive():
            pids = sorted({*pids, *descendants(self._proc.pid)})
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self._proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self._proc.wait(max(0.1, deadline - time.monotonic()))
        rest = [p for p in pids if p != self._proc.pid and _exists(p)]
        for pid in rest:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        while time.monotonic() < deadline and any(_exists(p) for p in rest):
            time.sleep(0.1)
        for pid in pids:
            if _exists(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if rc is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                rc = self._proc.wait(5.0)
        if self._log is not None:
            self._log.close()
            self._log = None
        return rc


def _start_time(pid: int) -> str:
    """A process's start time (clock ticks since boot), or "" when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19]
    except (OSError, IndexError):
        return ""


def _exists(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def serve(
    proc: ManagedProcess,
    *,
    companions: tuple[ManagedProcess, ...] = (),
    on_exit: Callable[[], None] | None = None,
    extra_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP),
) -> int:
    """Block until ``proc`` exits or this process is told to stop; always stop ``proc``.

    ``companions`` (helpers such as the warm ClientApp server) are stopped after ``proc``.

    Returns
    -------
    int
        0 after a requested stop, else the child's exit status (1 if unknown).
    """
    stop_requested: dict[str, Any] = {"sig": None}

    def _handler(signum: int, _frame: FrameType | None) -> None:
        stop_requested["sig"] = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, _handler) for s in extra_signals}
    try:
        while proc.alive():
            proc.remember_descendants()
            for c in companions:
                c.remember_descendants()
            time.sleep(0.5)
        rc = proc.returncode()
        return 1 if rc is None else (rc or 0)
    except KeyboardInterrupt:
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        # A Ctrl-C or a signal to the process group reached the child too: let it exit cleanly
        # before signalling it again.
        proc.stop(grace=5.0 if stop_requested["sig"] is not None or proc.alive() else 0.0)
        for c in companions:
            c.stop(grace=2.0)
        if on_exit is not None:
            on_exit()


def supervise(
    procs: Sequence[ManagedProcess],
    *,
    stop_signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP),
) -> tuple[int, ManagedProcess | None]:
    """Block until one of ``procs`` exits or this process is told to stop; then stop them all.

    For processes that only work together (the SuperLink and its proxy): when one dies, the
    others are stopped too. All are stopped at once (each with its descendants), so a stop
    takes as long as the slowest process, not their sum.

    Returns
    -------
    (int, ManagedProcess or None)
        ``(0, None)`` after a requested stop (Ctrl-C, SIGTERM, SIGHUP); otherwise the exit
        status of the process that exited first (1 if it exited with 0 or unknown) and that
        process.
    """
    stop_requested: dict[str, Any] = {"sig": None}

    def _handler(signum: int, _frame: FrameType | None) -> None:
        stop_requested["sig"] = signum
        raise KeyboardInterrupt

    # SIGINT too: a shell starts background jobs with SIGINT ignored, but the children (nginx,
    # uvicorn) still stop on it, which must read as a requested stop, not as a crash.
    old = {s: signal.signal(s, _handler) for s in stop_signals}
    dead: ManagedProcess | None = None
    try:
        while dead is None:
            for p in procs:
                if not p.alive():
                    dead = p
                    break
                p.remember_descendants()
            else:
                time.sleep(0.5)
        # A group signal may have stopped the child a moment before its handler ran here.
        time.sleep(0.3)
        rc = dead.returncode()
        return (rc or 1), dead
    except KeyboardInterrupt:
        return 0, None
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        # A Ctrl-C reaches the whole foreground process group: let the children exit cleanly
        # before signalling them again. A SIGTERM may have been sent to this process only.
        sig = stop_requested["sig"]
        grace = 0.0 if dead is not None else 5.0 if sig in (None, signal.SIGINT) else 1.0
        stoppers = [
            threading.Thread(target=p.stop, kwargs={"grace": grace}, daemon=True) for p in procs
        ]
        for t in stoppers:
            t.start()
        for t in stoppers:
            t.join()
