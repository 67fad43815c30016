"""Strict reader for the IDX files MNIST-style datasets ship as (optionally gzip-compressed).

An IDX file is a 4-byte magic number ``0x0000TTDD`` (TT = element type, DD = number of
dimensions), ``DD`` big-endian uint32 sizes, then the elements. Only unsigned bytes (TT = 0x08)
are accepted: that is what MNIST, Fashion-MNIST and EMNIST use. Files come from users, so every
header field and the exact file length are checked before any array is built.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from fedpriv.errors import DataError

__all__ = ["IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC", "read_idx", "write_idx"]

IDX_IMAGES_MAGIC = 0x00000803
"""uint8 elements, 3 dimensions (count, rows, columns)."""
IDX_LABELS_MAGIC = 0x00000801
"""uint8 elements, 1 dimension (count)."""

_UINT8 = 0x08
_CHUNK = 1 << 20


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def _read_upto(f: _Readable, n: int) -> bytes:
    """Read at most ``n`` bytes in chunks: a header can claim terabytes; never allocate that."""
    parts: list[bytes] = []
    left = n
    while left > 0:
        chunk = f.read(min(left, _CHUNK))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Read an IDX file of unsigned bytes into a uint8 array.

    Parameters
    ----------
    path : str or Path
        The file; a name ending in ``.gz`` is decompressed.
    magic : int, optional
        Required magic number, e.g. :data:`IDX_IMAGES_MAGIC`. Any uint8 IDX file if omitted.

    Raises
    ------
    DataError
        Unreadable file, wrong magic number, a zero dimension, or a length that is not exactly
        header + product of the dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = _read_upto(f, 4)
            if len(head) < 4:
                raise DataError(f"{path}: IDX header: file too short for a magic number")
            (found,) = struct.unpack(">I", head)
            if magic is not None and found != magic:
                raise DataError(
                    f"{path}: IDX header: magic number is 0x{found:08x}, expected 0x{magic:08x}"
                )
            if found >> 16 != 0 or (found >> 8) & 0xFF != _UINT8 or found & 0xFF == 0:
                raise DataError(
                    f"{path}: IDX header: magic number 0x{found:08x} is not an unsigned-byte "
                    "IDX file (expected 0x000008DD with DD >= 1 dimensions)"
                )
            ndim = found & 0xFF
            raw_dims = _read_upto(f, 4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataError(f"{path}: IDX header: file ends inside the {ndim} dimension sizes")
            dims = struct.unpack(f">{ndim}I", raw_dims)
            if any(d == 0 for d in dims):
                raise DataError(f"{path}: IDX header: dimension sizes {dims} include a zero")
            expected = math.prod(dims)
            # One byte more than needed, to detect trailing garbage without reading it all.
            body = _read_upto(f, expected + 1)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read IDX file: {e}") from e
    header_len = 4 + 4 * ndim
    need = header_len + expected
    if len(body) < expected:
        raise DataError(
            f"{path}: IDX data: dimensions {dims} need a file of exactly {need} bytes, "
            f"but it has only {header_len + len(body)} (truncated?)"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}: IDX data: file is longer than the {need} bytes implied by "
            f"dimensions {dims} (trailing data)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed if ``path`` ends in ``.gz``)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8 or arr.ndim == 0 or arr.ndim > 255:
        raise ValueError(f"write_idx needs a uint8 array with 1..255 dimensions, got {arr.dtype}")
    head = struct.pack(">I", (_UINT8 << 8) | arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    path = Path(path)
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(head + arr.tobytes())
