"""Byte-exact serialisation of a report: what is signed, and what is written to disk.

Two forms of one document:

* the *signed* form, :func:`canonical_bytes`: sorted keys, no whitespace, UTF-8, no NaN or
  infinity. The Ed25519 signature covers exactly these bytes.
* the *file* form, :func:`file_text`: the same document indented for people to read. Verification
  re-serialises the parsed file and requires the bytes to be identical, so even an edit that JSON
  would ignore (a space turned into a tab, keys reordered) is caught.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

__all__ = ["canonical_bytes", "file_text", "finite", "sha256_bytes", "sha256_file"]


def canonical_bytes(doc: Any) -> bytes:
    """The exact bytes a signature covers (raises ValueError on NaN or infinity)."""
    return json.dumps(
        doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def file_text(doc: Any) -> str:
    """The on-disk form: indented, sorted, UTF-8, one trailing newline."""
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def finite(x: Any) -> float | str | None:
    """A JSON-safe epsilon: the float, ``"inf"`` for an unbounded one, None when absent.

    Opacus' PRV accountant answers infinity far beyond any sane budget; that is the honest value
    and must survive serialisation, which plain JSON cannot carry as a number.
    """
    if x is None:
        return None
    v = float(x)
    if math.isnan(v):
        return None
    return v if math.isfinite(v) else "inf"
