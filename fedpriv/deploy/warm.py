"""A warm fork server for ClientApp processes on an edge device.

Flower's SuperNode starts one ``flwr-clientapp`` process per message. On a small CPU the
imports alone (torch, Opacus, TenSEAL, the dataset stack) cost about 10 s of CPU per message,
more than training a small model. ``fedpriv client start`` therefore runs this server next to
the SuperNode: it imports everything once, then for each message forks a child that runs the
fedpriv ClientApp (:mod:`fedpriv.deploy.clientapp`), sharing the imported pages copy-on-write.

Protocol (Unix socket in the owner-only state folder): the ``flwr-clientapp`` shim connects,
sends its arguments as JSON with its stdin/stdout/stderr descriptors (``SCM_RIGHTS``), and gets
the child's exit status back as 4 bytes; a ``T`` byte from the shim (it was told to stop) makes
the server SIGTERM that child. When the socket is not there, the shim runs the ClientApp
in a fresh process instead (``fedpriv client start --cold``, or a warm server that died).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path
from types import FrameType

__all__ = ["PRELOAD", "SHIM_NAME", "SOCKET_ENV", "install_shim", "serve", "shim_source"]

log = logging.getLogger("fedpriv.deploy.warm")
SHIM_NAME = "flwr-clientapp"
SOCKET_ENV = "FEDPRIV_WARM_SOCKET"
PRELOAD = (
    "numpy",
    "torch",
    "opacus",
    "tenseal",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supernode.cli.flwr_clientapp",
    "fedpriv.apps.client",
    "fedpriv.deploy.apps",
    "fedpriv.deploy.clientapp",
    "fedpriv.deploy.relay",
    "fedpriv.crypto",
    "fedpriv.data",
    "fedpriv.models",
    "fedpriv.privacy",
    "fedpriv.privacy.training",
    "flwr_datasets",
    "sklearn.datasets",
)
_STATUS = struct.Struct(">i")
_MAX_REQUEST = 1 << 16


def _preload() -> list[str]:
    loaded = []
    for name in PRELOAD:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError as exc:  # optional parts (e.g. a dataset backend) may be absent
            log.info("warm: %s not preloaded (%s)", name, exc)
    return loaded


def _child(argv: list[str], fds: list[int], listener: socket.socket, conn: socket.socket) -> None:
    """Runs in the forked child: become ``flwr-clientapp ARGV`` with the shim's stdio."""
    code = 1
    try:
        listener.close()
        conn.close()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        for target, fd in zip((0, 1, 2), fds, strict=False):
            os.dup2(fd, target)
        for fd in fds:
            if fd > 2:
                os.close(fd)
        sys.argv = ["flwr-clientapp", *argv]
        from fedpriv.deploy.clientapp import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(socket_path: Path) -> int:
    """Preload, listen on ``socket_path``, fork one child per request until told to stop."""
    loaded = _preload()
    from fedpriv.deploy.clientapp import patch_flower

    patch_flower()
    socket_path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(socket_path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    running: dict[int, socket.socket] = {}  # child pid -> shim connection
    by_conn: dict[socket.socket, int] = {}
    stop = {"now": False}

    def _stop(_sig: int, _frame: FrameType | None) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print(f"warm ClientApp server ready ({len(loaded)} modules preloaded)", flush=True)
    try:
        while not stop["now"]:
            try:
                ready, _, _ = select.select([listener, *by_conn], [], [], 0.5)
            except InterruptedError:
                continue
            for s in ready:
                if s is listener:
                    _accept(listener, running, by_conn)
                else:
                    _control(s, by_conn)
            _reap(running, by_conn)
    finally:
        listener.close()
        socket_path.unlink(missing_ok=True)
        for pid in list(running):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    return 0


def _accept(
    listener: socket.socket, running: dict[int, socket.socket], by_conn: dict[socket.socket, int]
) -> None:
    conn, _ = listener.accept()
    try:
        msg, fds, _flags, _addr = socket.recv_fds(conn, _MAX_REQUEST, 3)
        argv = json.loads(msg.decode())["argv"]
        if len(fds) != 3 or not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("bad request")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("warm: rejected a request: %s", exc)
        conn.close()
        return
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child; covered by the deployment tests
        _child(argv, fds, listener, conn)
    for fd in fds:
        os.close(fd)
    running[pid] = conn
    by_conn[conn] = pid


def _control(conn: socket.socket, by_conn: dict[socket.socket, int]) -> None:
    pid = by_conn.get(conn)
    try:
        data = conn.recv(16)
    except OSError:
        data = b""
    if pid is None:
        return
    if not data or b"T" in data:  # shim stopped (or gone): stop its child
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def _reap(running: dict[int, socket.socket], by_conn: dict[socket.socket, int]) -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = running.pop(pid, None)
        if conn is None:
            continue
        by_conn.pop(conn, None)
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            conn.sendall(_STATUS.pack(code if code >= 0 else 128 - code))
        conn.close()


def shim_source(python: str) -> str:
    """The ``flwr-clientapp`` shim: hand the task to the warm server, else run it cold."""
    return f"""#!{python} -S
# written by fedpriv client start: runs the installed fedpriv ClientApp, never FAB code
import json, os, signal, socket, struct, sys

def cold():
    os.execv({python!r}, [{python!r}, "-m", "fedpriv.deploy.clientapp", *sys.argv[1:]])

path = os.environ.get({SOCKET_ENV!r}, "")
if not path:
    cold()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(path)
    socket.send_fds(s, [json.dumps({{"argv": sys.argv[1:]}}).encode()], [0, 1, 2])
except OSError:
    s.close()
    cold()

def stop(sig, frame):
    try:
        s.send(b"T")
    except OSError:
        pass

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
buf = b""
while len(buf) < 4:
    try:
        chunk = s.recv(4 - len(buf))
    except InterruptedError:
        continue
    if not chunk:
        sys.exit(1)
    buf += chunk
sys.exit(struct.unpack(">i", buf)[0] & 0xFF)
"""


def install_shim(bin_dir: Path) -> Path:
    """Write the ``flwr-clientapp`` shim into ``bin_dir`` (put it first on the SuperNode's PATH).

    The shim hands each task to the warm server when ``FEDPRIV_WARM_SOCKET`` names a running
    one, else runs :func:`fedpriv.deploy.clientapp.main` in a new process.

    Returns
    -------
    Path
        The script.
    """
    from fedpriv.fileio import atomic_write_text

    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / SHIM_NAME
    atomic_write_text(script, shim_source(sys.executable), mode=0o755)
    return script


def main() -> None:
    """``python -m fedpriv.deploy.warm SOCKET``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        print("usage: python -m fedpriv.deploy.warm SOCKET", file=sys.stderr)
        sys.exit(2)
    sys.exit(serve(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
