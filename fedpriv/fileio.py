"""Atomic file writes (the one place fedpriv replaces a file on disk), and the per-user folder.

Every persistent file (privacy state, keys, checkpoints, metrics, bundles, models) is written to
a temporary file in the same folder, flushed and fsynced, then renamed over the target, so a crash
leaves either the old or the new content, never half of one. Files are owner-only by default.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fedpriv.errors import CryptoError

__all__ = ["atomic_write_bytes", "atomic_write_text", "fedpriv_home", "read_owner_only"]


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename), owner-only by default."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def fedpriv_home() -> Path:
    """``$FEDPRIV_HOME`` or ``~/.fedpriv``: per-user state that stays out of run folders
    (signing keys, device and server state, the run folders of a bare ``flwr run``)."""
    env = os.environ.get("FEDPRIV_HOME", "")
    return Path(env).expanduser() if env else Path.home() / ".fedpriv"


def read_owner_only(path: Path, what: str, *, missing: str | None = None) -> bytes:
    """The bytes of a secret file (``what`` names it in errors); refused when group or others
    can access it. ``missing``: the message when the file does not exist."""
    try:
        st = path.stat()
        if os.name == "posix" and st.st_mode & 0o077:
            raise CryptoError(
                f"{what} {path} is accessible by other users "
                f"(mode {st.st_mode & 0o777:o}); run: chmod 600 {path}"
            )
        return path.read_bytes()
    except FileNotFoundError as e:
        raise CryptoError(missing or f"cannot read {what} {path}: {e}") from None
    except OSError as e:
        raise CryptoError(f"cannot read {what} {path}: {e}") from None
