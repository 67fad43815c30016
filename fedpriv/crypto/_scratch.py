"""Byte (de)serialization for SEAL objects, whose Python bindings only save to and load from paths.

Every call uses its own ``mkstemp`` file (mode 0600) inside a private directory (mode 0700),
preferably on the ``/dev/shm`` tmpfs so secret keys never reach a disk, and deletes it at once.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from typing import Any, Protocol

__all__ = ["load_from_bytes", "save_to_bytes"]


class _Saveable(Protocol):
    def save(self, path: str, /) -> None: ...


_lock = threading.Lock()
_dir: str | None = None
_dir_pid = -1


def _scratch_dir() -> str:
    """Return this process's private scratch directory, creating it on first use (and after fork)."""
    global _dir, _dir_pid
    with _lock:
        if _dir is None or _dir_pid != os.getpid() or not os.path.isdir(_dir):
            base = (
                "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            )
            _dir = tempfile.mkdtemp(prefix="fedpriv-he-", dir=base)  # mkdtemp makes it 0700
            _dir_pid = os.getpid()
            atexit.register(shutil.rmtree, _dir, True)
        return _dir


def _new_path() -> str:
    fd, path = tempfile.mkstemp(dir=_scratch_dir())
    os.close(fd)
    return path


def save_to_bytes(obj: _Saveable) -> bytes:
    """Serialize a SEAL object (``obj.save(path)``) and return the bytes."""
    path = _new_path()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def load_from_bytes(obj: Any, context: Any, data: bytes) -> None:
    """Load ``data`` into a SEAL object with ``obj.load(context, path)``; SEAL errors propagate."""
    path = _new_path()
    try:
        with open(path, "wb") as f:
            f.write(data)
        obj.load(context, path)
    finally:
        os.unlink(path)
