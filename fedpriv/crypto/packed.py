"""Bit-packed BFV ciphertexts: what wire version 2 carries instead of SEAL's serialization.

SEAL stores every coefficient in a 64-bit word and compresses the stream with zstd. The
coefficients are uniform below the prime, so zstd gets a 32-bit coefficient down to about 4.2
bytes and a 40-bit one only to about 6 (docs/benchmarks.md). Version 2 stores each coefficient
in exactly the bit size of its prime (``coeff_modulus_bits``; SEAL's primes have that many
bits), little-endian, prime after prime:

* update (kind 1, a seeded symmetric ciphertext): packed c0 | PRNG type (u8) | PRNG seed (64
  bytes), from which SEAL regenerates c1;
* aggregate (kind 2, a full ciphertext): packed c0 | packed c1.

Everything else in SEAL's serialization is fixed by the public parameters (parms_id, ring
degree, number of primes, size 2, not in NTT form, scale 1, correction factor 1) and is rebuilt,
not sent. The receiver (:func:`unpack_entry`) checks the exact length, zero padding bits, every
coefficient below its prime and the PRNG type, rebuilds SEAL's own uncompressed serialization
and loads it through SEAL, so SEAL's checks (``is_valid_for``, metadata, the seed expanded by
SEAL's PRNG) all run on the unpacked form as they do for version 1.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from fedpriv.crypto.params import KIND_UPDATE, HEParams
from fedpriv.crypto.rq import pack_bits, unpack_bits
from fedpriv.errors import CryptoError, WireError

__all__ = ["SEED_INFO_BYTES", "pack_entry", "packed_entry_bytes", "unpack_entry"]

# SEAL's serialization header: magic, header size, version major/minor, compression, reserved, size.
_SEAL_HEAD = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_COMPR_NONE, _COMPR_ZSTD = 0, 2
# Ciphertext members: parms_id (4 x u64), NTT flag, size, N, number of primes, scale, correction.
_CT_META = struct.Struct("<4QBQQQdQ")
_U64 = struct.Struct("<Q")
_SEED_BYTES = 64
SEED_INFO_BYTES = 1 + _SEED_BYTES
_PRNG_TYPES = (1, 2)  # SEAL's prng_type: blake2xb, shake256
_DATA_HEAD = _SEAL_HEAD.size + _U64.size  # the data array's own header and its element count


def _data_bits(params: HEParams) -> tuple[int, ...]:
    bits = params.coeff_modulus_bits
    return bits if len(bits) == 1 else bits[:-1]


def _poly_bytes(params: HEParams) -> int:
    n = params.poly_modulus_degree
    return sum((n * b + 7) // 8 for b in _data_bits(params))


def packed_entry_bytes(params: HEParams, kind: int) -> int:
    """The exact size of one packed BFV ciphertext of ``kind``."""
    one = _poly_bytes(params)
    return one + SEED_INFO_BYTES if kind == KIND_UPDATE else 2 * one


def _pack_polys(params: HEParams, coeffs: np.ndarray) -> bytes:
    """(polys, primes, N) uint64 -> prime-by-prime bit-packed bytes."""
    bits = _data_bits(params)
    return b"".join(pack_bits(poly[j], b) for poly in coeffs for j, b in enumerate(bits))


def pack_entry(params: HEParams, kind: int, seal_bytes: bytes) -> bytes:
    """Pack one ciphertext SEAL serialized (this process's own output: raises CryptoError if its
    layout is not the one :func:`unpack_entry` rebuilds, e.g. after a SEAL upgrade)."""
    import zstandard

    n, primes = params.poly_modulus_degree, params.data_primes
    magic, hsize, _major, _minor, compr, _res, size = _SEAL_HEAD.unpack_from(seal_bytes)
    if magic != _SEAL_MAGIC or hsize != _SEAL_HEAD.size or size != len(seal_bytes):
        raise CryptoError("pack: not a SEAL serialization")
    body = seal_bytes[_SEAL_HEAD.size :]
    if compr == _COMPR_ZSTD:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=64 << 20)
    elif compr != _COMPR_NONE:
        raise CryptoError(f"pack: SEAL compression mode {compr}")
    meta = _CT_META.unpack_from(body)
    if meta[4:] != (0, 2, n, primes, 1.0, 1):
        raise CryptoError(f"pack: unexpected ciphertext metadata {meta[4:]}")
    polys = 1 if kind == KIND_UPDATE else 2
    count = polys * primes * n
    off = _CT_META.size + _SEAL_HEAD.size
    (declared,) = _U64.unpack_from(body, off)
    tail = SEED_INFO_BYTES + _SEAL_HEAD.size if kind == KIND_UPDATE else 0
    if declared != count or len(body) != off + _U64.size + 8 * count + tail:
        raise CryptoError("pack: ciphertext is not the expected seeded/full shape")
    coeffs = np.frombuffer(body, dtype="<u8", count=count, offset=off + _U64.size)
    out = _pack_polys(params, coeffs.reshape(polys, primes, n))
    if kind == KIND_UPDATE:
        seed_info = body[-SEED_INFO_BYTES:]
        if seed_info[0] not in _PRNG_TYPES:
            raise CryptoError("pack: the ciphertext is not seeded")
        out += seed_info
    return out


def unpack_entry(
    params: HEParams,
    kind: int,
    entry: bytes,
    parms_id: Sequence[int],
    primes: Sequence[int],
    index: int,
) -> bytes:
    """SEAL's uncompressed serialization of one packed ciphertext; WireError if malformed.

    ``parms_id`` and ``primes`` are those of the receiver's own SEAL context (data level).
    """
    n = params.poly_modulus_degree
    bits = _data_bits(params)
    if len(primes) != len(bits):
        raise CryptoError("unpack: prime count differs from the parameters")
    need = packed_entry_bytes(params, kind)
    if len(entry) != need:
        raise WireError(f"ciphertext {index}: {len(entry)} packed bytes, expected {need}")
    polys = 1 if kind == KIND_UPDATE else 2
    coeffs = np.empty((polys, len(bits), n), dtype=np.uint64)
    off = 0
    for k in range(polys):
        for j, (b, p) in enumerate(zip(bits, primes, strict=True)):
            size = (n * b + 7) // 8
            try:
                coeffs[k, j] = unpack_bits(entry[off : off + size], b, n)
            except ValueError as e:
                raise WireError(f"ciphertext {index}: {e}") from None
            if int(coeffs[k, j].max()) >= p:
                raise WireError(f"ciphertext {index}: a coefficient is not reduced modulo q")
            off += size
    from tenseal.sealapi import Serialization

    head = Serialization.SEALHeader()
    major, minor = int(head.version_major), int(head.version_minor)

    def seal_header(size: int) -> bytes:
        return _SEAL_HEAD.pack(_SEAL_MAGIC, _SEAL_HEAD.size, major, minor, _COMPR_NONE, 0, size)

    count = polys * len(bits) * n
    data = _U64.pack(count) + coeffs.astype("<u8").tobytes()
    parts = [
        _CT_META.pack(*parms_id, 0, 2, n, len(bits), 1.0, 1),
        seal_header(_SEAL_HEAD.size + len(data)),
        data,
    ]
    if kind == KIND_UPDATE:
        seed_info = entry[off:]
        if seed_info[0] not in _PRNG_TYPES:
            raise WireError(f"ciphertext {index}: unknown PRNG type {seed_info[0]}")
        parts += [seal_header(_SEAL_HEAD.size + SEED_INFO_BYTES), seed_info]
    body = b"".join(parts)
    return seal_header(_SEAL_HEAD.size + len(body)) + body
