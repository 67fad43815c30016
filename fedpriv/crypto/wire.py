"""The one wire format for encrypted updates and aggregates.

Layout (integers big-endian)::

    b"FPHE" | version u8 | kind u8 | scheme u8 | params fingerprint (32 bytes, raw SHA-256)
    | count u32 | count x (length u32 | ciphertext bytes) | SHA-256 of everything before (32 bytes)

``kind`` is 1 for a client update and 2 for an aggregate. Version 2 (BFV, what this code
writes) carries bit-packed ciphertexts of an exact length (:mod:`fedpriv.crypto.packed`);
version 1 carries SEAL's own zstd serialization (CKKS, and BFV blobs of earlier releases, still
accepted). The trailing digest detects
corruption only: anyone can recompute it, so it is no authentication. Authenticity must come
from the transport (TLS plus SuperNode authentication), and a client holding the shared key can
always submit any well-formed ciphertext (see the threat model in ``fedpriv.crypto``).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence
from hashlib import sha256
from typing import NamedTuple

from fedpriv.crypto.params import (
    KIND_AGGREGATE,
    KIND_UPDATE,
    WIRE_DIGEST_BYTES,
    WIRE_HEADER_BYTES,
    HEParams,
)
from fedpriv.errors import WireError

__all__ = [
    "KIND_AGGREGATE",
    "KIND_UPDATE",
    "LEGACY_VERSION",
    "MAGIC",
    "VERSION",
    "Frame",
    "pack",
    "unpack",
    "unpack_frame",
    "version_for",
]

MAGIC = b"FPHE"
VERSION = 2
LEGACY_VERSION = 1
SCHEME_CODES = {"bfv": 1, "ckks": 2}
KIND_NAMES = {KIND_UPDATE: "update", KIND_AGGREGATE: "aggregate"}
_HEAD = struct.Struct(">4sBBB32sI")
_LEN = struct.Struct(">I")
assert _HEAD.size == WIRE_HEADER_BYTES


class Frame(NamedTuple):
    """A checked blob: its wire version, kind and ciphertext entries (not yet decoded)."""

    version: int
    kind: int
    entries: list[bytes]


def _versions(params: HEParams) -> tuple[int, ...]:
    return (LEGACY_VERSION, VERSION) if params.scheme == "bfv" else (LEGACY_VERSION,)


def version_for(params: HEParams) -> int:
    """The version this code writes: 2 (packed) for BFV, 1 for CKKS."""
    return VERSION if params.scheme == "bfv" else LEGACY_VERSION


def pack(
    params: HEParams, kind: int, entries: Sequence[bytes], version: int = LEGACY_VERSION
) -> bytes:
    """Frame ciphertext entries, already serialized for ``version``, as one blob."""
    if version not in _versions(params):
        raise ValueError(f"wire version {version} does not exist for {params.scheme}")
    parts = [
        _HEAD.pack(
            MAGIC,
            version,
            kind,
            SCHEME_CODES[params.scheme],
            params.fingerprint_bytes(),
            len(entries),
        )
    ]
    for e in entries:
        parts.append(_LEN.pack(len(e)))
        parts.append(e)
    body = b"".join(parts)
    return body + sha256(body).digest()


def unpack(
    blob: bytes,
    params: HEParams,
    kinds: frozenset[int],
    fingerprint: bytes | None = None,
) -> tuple[int, list[bytes]]:
    """:func:`unpack_frame` without the version: (kind, ciphertext entries)."""
    frame = unpack_frame(blob, params, kinds, fingerprint)
    return frame.kind, frame.entries


def unpack_frame(
    blob: bytes,
    params: HEParams,
    kinds: frozenset[int],
    fingerprint: bytes | None = None,
) -> Frame:
    """Check the framing of ``blob`` against ``params``; return its version, kind and entries.

    Nothing is decoded until the whole frame checks out: sizes, magic, version, kind, scheme,
    fingerprint, ciphertext count, every length, no trailing bytes, digest.

    Raises
    ------
    WireError
        With the first reason the blob is refused.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    size = len(blob)
    min_size = WIRE_HEADER_BYTES + WIRE_DIGEST_BYTES
    if size < min_size:
        raise WireError(f"blob too short: {size} bytes, a header alone needs {min_size}")
    biggest = max(params.max_blob_bytes_for(k) for k in kinds)
    if size > biggest:
        raise WireError(f"blob too large: {size} bytes, at most {biggest} expected")
    magic, version, kind, scheme, fp, count = _HEAD.unpack_from(blob, 0)
    if magic != MAGIC:
        raise WireError("bad magic: not a fedpriv HE blob")
    if version not in _versions(params):
        raise WireError(
            f"unsupported wire version {version} for {params.scheme} "
            f"(expected {' or '.join(map(str, _versions(params)))})"
        )
    if kind not in kinds:
        want = " or ".join(KIND_NAMES[k] for k in sorted(kinds))
        raise WireError(f"wrong blob kind {KIND_NAMES.get(kind, kind)!r}, expected {want}")
    if scheme != SCHEME_CODES[params.scheme]:
        raise WireError(f"scheme code {scheme} does not match the parameters ({params.scheme})")
    expected_fp = params.fingerprint_bytes() if fingerprint is None else fingerprint
    if not hmac.compare_digest(fp, expected_fp):
        raise WireError("parameter fingerprint mismatch: blob was made for other HE parameters")
    if count != params.num_ciphertexts:
        raise WireError(f"ciphertext count {count}, parameters require {params.num_ciphertexts}")
    if size > params.max_blob_bytes_for(kind):
        raise WireError(f"{KIND_NAMES[kind]} blob too large: {size} bytes")
    if version == VERSION:
        from fedpriv.crypto.packed import packed_entry_bytes

        exact: int | None = packed_entry_bytes(params, kind)
        limit = exact
    else:
        exact, limit = None, params.max_entry_bytes(kind)
    end = size - WIRE_DIGEST_BYTES
    off = WIRE_HEADER_BYTES
    spans: list[tuple[int, int]] = []
    for i in range(count):
        if off + _LEN.size > end:
            raise WireError(f"truncated: length of ciphertext {i} missing")
        (n,) = _LEN.unpack_from(blob, off)
        off += _LEN.size
        if n == 0:
            raise WireError(f"ciphertext {i} is empty")
        if n > limit:
            raise WireError(f"ciphertext {i} declares {n} bytes, at most {limit} allowed")
        if exact is not None and n != exact:
            raise WireError(f"ciphertext {i} declares {n} bytes, a packed one has {exact}")
        if off + n > end:
            raise WireError(f"truncated: ciphertext {i} declares {n} bytes, {end - off} left")
        spans.append((off, n))
        off += n
    if off != end:
        raise WireError(f"{end - off} unexpected bytes after the last ciphertext")
    if not hmac.compare_digest(sha256(blob[:end]).digest(), blob[end:]):
        raise WireError("digest mismatch: blob corrupted in transit")
    return Frame(version, kind, [blob[o : o + n] for o, n in spans])
