"""Threshold custody for BFV: no single party holds the key that decrypts an update.

A dealer makes one BFV key with SEAL, Shamir-shares the secret s over R_q (each RNS prime, each
coefficient) among n parties with threshold T, publishes the collective public key, and keeps
nothing. Clients encrypt under the public key (SEAL's public-key ``Encryptor``); the server sums
ciphertexts with numpy from public parameters alone. To decrypt an aggregate, T parties of a
named set P each turn their share into an additive share with the Lagrange coefficient for P
(Mouchet, Bertrand and Hubaux 2022; Lattigo's ``Combiner``), and send

    d_i = lambda_i s_i * c1 + e_i,      e_i flooding noise from the OS CSPRNG,

compressed to b bits. c0 + sum d_i = (q/t) m + noise, which rounds to the exact integer sum.
Sizes, widths and their derivation: :mod:`fedpriv.crypto.tparams` and docs/crypto.md.

Who runs what
-------------
* dealer: :func:`deal` -> public-key blob + one :class:`KeyShare` per party (``KeyShare.save``);
  :func:`reshare_contribution` / :func:`assemble_share` add a party later from T holders.
* client: :class:`ThresholdEncryptor` (public key only) -> update blob.
* server: :class:`ThresholdAggregator` (no key) -> aggregate blob; :func:`combine_partials`
  sums T partial decryptions into one combined blob (it learns nothing from it when the
  partials are masked).
* decrypting party: :meth:`KeyShare.partial_decrypt` (aggregate blob, the set P, optional mask)
  -> partial blob.
* whoever may read the aggregate: :func:`finish_decryption` (combined blob, masks) ->
  :class:`~fedpriv.crypto.core.DecryptedAggregate`.

Wire format (big-endian)::

    b"FPTH" | version u8 | kind u8 | params fingerprint (32) | key id (32) | header | payload
    | SHA-256 of everything before (32)

Every size is fixed by the parameters (no length field an attacker could choose, except the
public key's, which is bounded), every residue is checked against its prime, padding bits must be
zero and nothing may trail. The digest detects corruption only; authenticity comes from the
transport and the signatures of the protocol layer.

Security: passive (honest-but-curious) parties and server; see docs/crypto.md for what a
malicious client or server can still do.
"""

from __future__ import annotations

import hmac
import os
import struct
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256, shake_256
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fedpriv.crypto.core import DecryptedAggregate, EncryptedUpdate, bfv_update_slots
from fedpriv.crypto.rq import (
    RnsContext,
    bit_reverse_permutation,
    pack_bits,
    uniform_mod,
    unpack_bits,
)
from fedpriv.crypto.tparams import SEAL_NOISE_MAX, ThresholdParams
from fedpriv.errors import CryptoError, WireError
from fedpriv.fileio import atomic_write_bytes, read_owner_only
from fedpriv.privacy.rng import DpRandom

__all__ = [
    "KIND_AGGREGATE",
    "KIND_COMBINED",
    "KIND_PARTIAL",
    "KIND_PUBLIC_KEY",
    "KIND_RESHARE",
    "KIND_UPDATE",
    "SHARE_FILE_NAME",
    "BatchDecoder",
    "CombinedInfo",
    "DealtKeys",
    "KeyShare",
    "PartialInfo",
    "ThresholdAggregator",
    "ThresholdEncryptor",
    "aggregate_count",
    "aggregate_digest",
    "assemble_share",
    "combine_partials",
    "combined_info",
    "deal",
    "derive_mask",
    "finish_decryption",
    "flooding_noise",
    "key_id_of",
    "lagrange_at_zero",
    "partial_blob_bytes",
    "partial_info",
    "reshare_contribution",
    "threshold_decrypt",
    "update_blob_bytes",
]

MAGIC = b"FPTH"
VERSION = 1
KIND_UPDATE = 1
KIND_AGGREGATE = 2
KIND_PARTIAL = 3
KIND_COMBINED = 4
KIND_PUBLIC_KEY = 5
KIND_RESHARE = 6
_KIND_NAMES = {
    KIND_UPDATE: "update",
    KIND_AGGREGATE: "aggregate",
    KIND_PARTIAL: "partial decryption",
    KIND_COMBINED: "combined decryption",
    KIND_PUBLIC_KEY: "public key",
    KIND_RESHARE: "re-sharing contribution",
}
_HEAD = struct.Struct(">4sBB32s32s")
_DIGEST = 32
_MAX_PUBLIC_KEY_BYTES = 64 << 20
SHARE_FILE_NAME = "he_share.fpkey"
_SHARE_MAGIC = b"FPTHSHR\x00"
_SHARE_VERSION = 1
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = np.uint64
_KEY_DOMAIN = b"fedpriv threshold BFV public key v1\x00"
_MASK_DOMAIN = b"fedpriv threshold mask v1\x00"
_RESHARE_DOMAIN = b"fedpriv threshold reshare v1\x00"
_CHUNK_CIPHERTEXTS = 8


def _no_pickle(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} cannot be pickled; use its bytes/save methods")


# --------------------------------------------------------------------------- contexts
@lru_cache(maxsize=8)
def _rns(params: ThresholdParams) -> RnsContext:
    return RnsContext(params.poly_modulus_degree, params.primes)


@lru_cache(maxsize=8)
def _decoder(params: ThresholdParams) -> BatchDecoder:
    return BatchDecoder(params.poly_modulus_degree, params.plain_modulus)


def _seal_context(params: ThresholdParams) -> Any:
    import tenseal.sealapi as seal

    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus([seal.Modulus(p) for p in (*params.primes, params.special_prime)])
    parms.set_plain_modulus(seal.Modulus(params.plain_modulus))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise CryptoError(
            f"SEAL refuses the threshold parameters: {ctx.parameters_error_message()}"
        )
    if not ctx.first_context_data().qualifiers().using_batching:
        raise CryptoError("SEAL: plain modulus does not support batching")
    return ctx


# --------------------------------------------------------------------------- SEAL objects
_SEAL_HEAD = struct.Struct("<HBBBBHQ")
_SEAL_CT_META = struct.Struct("<4QBQQQdQ")  # parms_id, ntt flag, size, N, primes, scale, corr.


def _seal_polys(data: bytes, n: int, primes: int, ntt: bool) -> np.ndarray:
    """Coefficients of a serialized SEAL Ciphertext/PublicKey as (size, primes, N) uint64."""
    import zstandard

    magic, hsize, major, _minor, compr, _res, size = _SEAL_HEAD.unpack_from(data)
    if magic != 0xA15E or hsize != 16 or major != 4 or size != len(data):
        raise CryptoError("unexpected SEAL serialization header")
    body = data[16:]
    if compr == 2:
        body = zstandard.ZstdDecompressor().decompress(body, max_output_size=64 << 20)
    elif compr != 0:
        raise CryptoError(f"unsupported SEAL compression mode {compr}")
    meta = _SEAL_CT_META.unpack_from(body)
    is_ntt, count, degree, nprimes = meta[4], meta[5], meta[6], meta[7]
    values = count * nprimes * degree
    # After the metadata: the data array (its own 16-byte SEAL header, a u64 size, the values).
    start = _SEAL_CT_META.size + 16 + 8
    if degree != n or nprimes != primes or bool(is_ntt) != ntt or len(body) != start + 8 * values:
        raise CryptoError("SEAL object does not have the expected shape")
    return np.frombuffer(body, dtype="<u8", offset=start).astype(_U64).reshape(count, nprimes, n)


# --------------------------------------------------------------------------- batch decoding
class BatchDecoder:
    """SEAL's BatchEncoder decode in numpy: plaintext coefficients mod t -> N slots.

    A negacyclic NTT mod t (same root and ordering as SEAL) followed by SEAL's slot
    permutation (powers of 3 mod 2N; ``tests/unit/test_threshold.py`` checks it against SEAL).
    """

    def __init__(self, n: int, t: int) -> None:
        self.n, self.t = n, t
        self._ctx = RnsContext(n, [t])
        m, row, pos = 2 * n, n // 2, 1
        rev = bit_reverse_permutation(n)
        index = np.empty(n, dtype=np.int64)
        for i in range(row):
            index[i] = rev[(pos - 1) >> 1]
            index[row + i] = rev[(m - pos - 1) >> 1]
            pos = pos * 3 % m
        self._index = index

    def decode(self, coeffs: np.ndarray) -> np.ndarray:
        """(..., N) coefficients in [0, t) -> (..., N) centred int64 slot values."""
        c = np.asarray(coeffs, dtype=_U64)
        out = self._ctx.ntt(c[..., None, :])[..., 0, :][..., self._index]
        v = out.astype(np.int64)
        v[v > self.t // 2] -= self.t
        return v


# --------------------------------------------------------------------------- framing
def _frame(
    params: ThresholdParams, kind: int, key_id: bytes, header: bytes, payload: bytes
) -> bytes:
    body = b"".join(
        [_HEAD.pack(MAGIC, VERSION, kind, params.fingerprint_bytes(), key_id), header, payload]
    )
    return body + sha256(body).digest()


def _unframe(
    blob: object,
    params: ThresholdParams,
    kind: int,
    key_id: bytes | None,
    header_size: int,
    payload_size: int | None,
) -> tuple[bytes, bytes, bytes]:
    """Check a blob's framing; return (key id, header, payload). Raises WireError."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise WireError(f"expected bytes, got {type(blob).__name__}")
    data = bytes(blob)
    name = _KIND_NAMES[kind]
    fixed = _HEAD.size + header_size + _DIGEST
    if len(data) < fixed:
        raise WireError(f"{name}: {len(data)} bytes, shorter than its header")
    magic, version, k, fp, kid = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"{name}: bad magic, not a fedpriv threshold blob")
    if version != VERSION:
        raise WireError(f"{name}: unsupported version {version}")
    if k != kind:
        raise WireError(f"wrong blob kind {_KIND_NAMES.get(k, k)!r}, expected {name}")
    if not hmac.compare_digest(fp, params.fingerprint_bytes()):
        raise WireError(f"{name}: parameter fingerprint mismatch (made for other parameters)")
    if key_id is not None and not hmac.compare_digest(kid, key_id):
        raise WireError(f"{name}: made for another key (key id mismatch)")
    if payload_size is not None and len(data) != fixed + payload_size:
        raise WireError(f"{name}: {len(data)} bytes, expected exactly {fixed + payload_size}")
    end = len(data) - _DIGEST
    if not hmac.compare_digest(sha256(data[:end]).digest(), data[end:]):
        raise WireError(f"{name}: digest mismatch (corrupted in transit)")
    h0 = _HEAD.size
    return kid, data[h0 : h0 + header_size], data[h0 + header_size : end]


def _unpack(data: bytes, bits: int, count: int, what: str) -> np.ndarray:
    try:
        return unpack_bits(data, bits, count)
    except ValueError as e:
        raise WireError(f"{what}: {e}") from None


def _pack_ciphertext(params: ThresholdParams, c0c: np.ndarray, c1: np.ndarray) -> bytes:
    """c0c (cts, N) < 2^b and c1 (cts, L, N) residues -> payload."""
    parts = [pack_bits(c0c, params.compress_bits)]
    for j, b in enumerate(params.prime_bits):
        parts.append(pack_bits(c1[:, j, :], b))
    return b"".join(parts)


def _unpack_ciphertext(
    params: ThresholdParams, payload: bytes, what: str
) -> tuple[np.ndarray, np.ndarray]:
    cts, n, m = params.num_ciphertexts, params.poly_modulus_degree, params.num_coefficients
    off = (m * params.compress_bits + 7) // 8
    c0c = _unpack(payload[:off], params.compress_bits, m, what).reshape(cts, n)
    c1 = np.empty((cts, len(params.primes), n), dtype=_U64)
    for j, (p, b) in enumerate(zip(params.primes, params.prime_bits, strict=True)):
        size = (m * b + 7) // 8
        row = _unpack(payload[off : off + size], b, m, what)
        if np.any(row >= _U64(p)):
            raise WireError(f"{what}: a coefficient is not below its prime {p}")
        c1[:, j, :] = row.reshape(cts, n)
        off += size
    if off != len(payload):
        raise WireError(f"{what}: {len(payload) - off} unexpected bytes")
    return c0c, c1


def update_blob_bytes(params: ThresholdParams) -> int:
    """Exact size of every client update blob."""
    return _HEAD.size + params.ciphertext_payload_bytes + _DIGEST


def _aggregate_header_size() -> int:
    return 4


def _partial_header_size(params: ThresholdParams) -> int:
    # party, P (T x u16), masked flag, aggregate digest, count
    return 2 + 2 * params.threshold + 1 + 32 + 4


def _combined_header_size(params: ThresholdParams) -> int:
    return 2 * params.threshold + 1 + 32 + 4


def partial_blob_bytes(params: ThresholdParams) -> int:
    """Exact size of one partial-decryption blob."""
    return _HEAD.size + _partial_header_size(params) + params.partial_payload_bytes + _DIGEST


def aggregate_digest(blob: bytes) -> bytes:
    """What partial decryptions are bound to: SHA-256 of the whole aggregate blob."""
    return sha256(bytes(blob)).digest()


def key_id_of(public_key_blob: bytes) -> bytes:
    """The key id a public-key blob declares (checked against its content by every loader)."""
    if len(public_key_blob) < _HEAD.size:
        raise WireError("public key: too short")
    return bytes(public_key_blob[_HEAD.size - 32 : _HEAD.size])


def _key_id(seal_pk: bytes) -> bytes:
    return sha256(_KEY_DOMAIN + seal_pk).digest()


def _check_participants(params: ThresholdParams, participants: Sequence[int]) -> tuple[int, ...]:
    ps = tuple(int(x) for x in participants)
    if len(ps) != params.threshold:
        raise CryptoError(
            f"a decryption needs exactly {params.threshold} participants (the threshold), "
            f"got {len(ps)}"
        )
    if len(set(ps)) != len(ps) or not all(1 <= x <= params.parties for x in ps):
        raise CryptoError(f"participants must be distinct party indices in 1..{params.parties}")
    return tuple(sorted(ps))


def lagrange_at_zero(params: ThresholdParams, index: int, participants: Sequence[int]) -> list[int]:
    """RNS residues of lambda_index = prod_{j in P, j != index} x_j / (x_j - x_index)."""
    out = []
    for q in params.primes:
        num, den = 1, 1
        for j in participants:
            if j != index:
                num = num * j % q
                den = den * (j - index) % q
        out.append(num * pow(den, -1, q) % q)
    return out


# --------------------------------------------------------------------------- flooding
def flooding_noise(count: int, flood_bits: int, primes: Sequence[int]) -> np.ndarray:
    """RNS residues (L, count) of ``count`` independent flooding terms from the OS CSPRNG.

    Each term is floor(U_1 + U_2 + U_3) - 3W/2 with U_i uniform on [0, W), W = 2^flood_bits:
    three uniform integers below W plus a carry J in {0, 1, 2} with probabilities 1/6, 2/3,
    1/6 (the integer part of a sum of three uniforms on [0, 1)). Exact sampling: bit masks and
    byte rejection only, no floating point (whose gaps a combiner could exploit).
    """
    w = flood_bits
    if not 1 <= w <= 120:
        raise ValueError(f"flood_bits must be in 1..120, got {w}")
    nb = (w + 7) // 8
    lo = np.zeros(count, dtype=_U64)
    mid = np.zeros(count, dtype=_U64)
    hi = np.zeros(count, dtype=_U64)
    low32 = _U64(0xFFFFFFFF)
    for _ in range(3):
        buf = np.zeros((count, 16), dtype=np.uint8)
        buf[:, :nb] = np.frombuffer(os.urandom(count * nb), dtype=np.uint8).reshape(count, nb)
        words = buf.view("<u8").astype(_U64)
        a, b = words[:, 0], words[:, 1]
        if w < 64:
            a &= _U64((1 << w) - 1)
            b[:] = 0
        elif w < 128:
            b &= _U64((1 << (w - 64)) - 1)
        lo += a & low32
        mid += a >> _U64(32)
        hi += b
    # Carry J: a uniform r in [0, 6) by rejecting bytes >= 252; J = 0 if r = 0, 2 if r = 5, else 1.
    r = np.empty(0, dtype=np.uint8)
    while r.size < count:
        raw = np.frombuffer(os.urandom(count - r.size + 64), dtype=np.uint8)
        r = np.concatenate([r, raw[raw < 252][: count - r.size]])
    r6 = r % 6
    lo += (r6 > 0).astype(_U64) + (r6 == 5).astype(_U64)
    centre = 3 * (1 << w) // 2
    out = np.empty((len(primes), count), dtype=_U64)
    for j, p in enumerate(primes):
        pu = _U64(p)
        two32 = _U64((1 << 32) % p)
        x = hi % pu
        x = (x * two32) % pu
        x = (x + mid % pu) % pu
        x = (x * two32) % pu
        x = (x + lo % pu) % pu
        x = (x + pu - _U64(centre % p)) % pu
        out[j] = x
    return out


# --------------------------------------------------------------------------- masks
def derive_mask(
    params: ThresholdParams, mask_key: bytes, aggregate: bytes, index: int
) -> np.ndarray:
    """Party ``index``'s mask for the aggregate with digest ``aggregate``: uniform mod 2^b.

    Parties that share ``mask_key`` (the server does not) add these masks to their partial
    decryptions; the server's combined blob is then uniformly random to it, and only a holder
    of ``mask_key`` can finish the decryption. SHAKE-256 keyed with ``mask_key``.
    """
    if len(mask_key) < 16 or len(aggregate) != 32:
        raise ValueError("mask_key must have >= 16 bytes and aggregate be a 32-byte digest")
    m = params.num_coefficients
    h = shake_256(_MASK_DOMAIN + params.fingerprint_bytes() + aggregate + _U16.pack(index))
    h.update(_U32.pack(len(mask_key)) + mask_key)
    raw = np.frombuffer(h.digest(8 * m), dtype="<u8").astype(_U64)
    return (raw & _U64((1 << params.compress_bits) - 1)).reshape(
        params.num_ciphertexts, params.poly_modulus_degree
    )


def _check_mask(params: ThresholdParams, mask: np.ndarray) -> np.ndarray:
    shape = (params.num_ciphertexts, params.poly_modulus_degree)
    m = np.asarray(mask)
    if m.shape != shape or m.dtype != _U64 or np.any(m >> _U64(params.compress_bits)):
        raise CryptoError(f"a mask must be uint64 {shape} below 2^{params.compress_bits}")
    return m


# --------------------------------------------------------------------------- dealer
@dataclass(frozen=True)
class DealtKeys:
    """What the dealer hands out: the public-key blob (to everyone) and one share per party."""

    public_key: bytes
    shares: tuple[KeyShare, ...]

    @property
    def key_id(self) -> bytes:
        return key_id_of(self.public_key)


def _read_secret(sk: Any, params: ThresholdParams) -> np.ndarray:
    """s as int8 coefficients in {-1, 0, 1}, read from SEAL's NTT-form key without any file."""
    n, nq = params.poly_modulus_degree, len(params.primes)
    plain = sk.data()
    if plain.coeff_count() != n * (nq + 1) or not plain.is_ntt_form():
        raise CryptoError("SEAL secret key has an unexpected layout")
    ntt = np.array([plain.data(i) for i in range(n * nq)], dtype=_U64).reshape(nq, n)
    rns = _rns(params)
    coeffs = rns.intt(ntt)
    ntt.fill(0)
    q0 = _U64(params.primes[0])
    s = np.zeros(n, dtype=np.int8)
    s[coeffs[0] == 1] = 1
    s[coeffs[0] == q0 - _U64(1)] = -1
    ok = np.array_equal(rns.from_signed(s.astype(np.int64)), coeffs)
    coeffs.fill(0)
    if not ok:
        s.fill(0)
        raise CryptoError("SEAL secret key is not ternary in every prime")
    return s


def deal(params: ThresholdParams, indices: Sequence[int] | None = None) -> DealtKeys:
    """Generate the BFV key, Shamir-share its secret among ``indices`` and forget it.

    Parameters
    ----------
    params : ThresholdParams
    indices : sequence of int, optional
        Party indices to deal shares to (default 1..params.parties); at least the threshold.

    Notes
    -----
    Erasure: no file is written that holds s or any residue of it (the key is read from SEAL's
    memory, not serialized); the numpy arrays holding s and the Shamir coefficients are
    overwritten with zeros before they are released, and SEAL's key objects are dropped.
    Python cannot guarantee more: SEAL frees (but we cannot verify it clears) its own buffers,
    and small Python integers created while reading the key live in the interpreter's heap
    until the process exits. Run the dealer in a short-lived process on a trusted machine.
    """
    import tenseal.sealapi as seal

    from fedpriv.crypto._scratch import save_to_bytes

    idx = list(range(1, params.parties + 1)) if indices is None else [int(i) for i in indices]
    if len(set(idx)) != len(idx) or not all(1 <= i <= params.parties for i in idx):
        raise CryptoError(f"share indices must be distinct and in 1..{params.parties}")
    if len(idx) < params.threshold:
        raise CryptoError(f"{len(idx)} shares cannot reach the threshold {params.threshold}")
    ctx = _seal_context(params)
    kg = seal.KeyGenerator(ctx)
    sk = kg.secret_key()
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    pk_bytes = save_to_bytes(pk)
    s = _read_secret(sk, params)
    del sk, kg
    rns = _rns(params)
    n, nq = params.poly_modulus_degree, len(params.primes)
    # The public key's error e = -(p0 + p1 s) must be within SEAL's bound: the noise analysis
    # (tparams) relies on it. pk is in NTT form at the key level (data primes + special prime).
    pkp = _seal_polys(pk_bytes, n, nq + 1, ntt=True)[:, :nq, :]
    s_rns = rns.from_signed(s.astype(np.int64))
    e = rns.neg(rns.add(rns.intt(pkp[0]), rns.mul(rns.intt(pkp[1]), s_rns)))
    q0 = int(params.primes[0])
    e0 = e[0].astype(np.int64)
    e0[e0 > q0 // 2] -= q0
    if np.abs(e0).max() > SEAL_NOISE_MAX:
        raise CryptoError("SEAL public key error exceeds the bound the noise analysis assumes")
    # Shamir over Z_{q_j} for every prime and coefficient: S(x) = s + a_1 x + ... + a_{T-1} x^{T-1}.
    coeffs = [
        np.stack([uniform_mod(q, (n,)) for q in params.primes]) for _ in range(params.threshold - 1)
    ]
    shares = []
    for x in idx:
        acc = np.zeros((nq, n), dtype=_U64)
        for a in reversed(coeffs):  # Horner: ((a_{T-1} x + a_{T-2}) x + ...) x + s
            acc = rns.add(acc, a)
            acc = rns.mul_scalars(acc, [x] * nq)
        acc = rns.add(acc, s_rns)
        shares.append(KeyShare(params, _key_id(pk_bytes), x, acc))
    for a in coeffs:
        a.fill(0)
    s_rns.fill(0)
    s.fill(0)
    public = _frame(params, KIND_PUBLIC_KEY, _key_id(pk_bytes), _U32.pack(len(pk_bytes)), pk_bytes)
    return DealtKeys(public, tuple(shares))


def _load_public_key(params: ThresholdParams, blob: bytes) -> tuple[bytes, bytes]:
    """(key id, SEAL public-key bytes) of a public-key blob, framing checked."""
    if not isinstance(blob, (bytes, bytearray)) or len(blob) > _MAX_PUBLIC_KEY_BYTES:
        raise WireError("public key: not bytes or too large")
    kid, header, payload = _unframe(blob, params, KIND_PUBLIC_KEY, None, 4, None)
    (size,) = _U32.unpack(header)
    if size != len(payload):
        raise WireError("public key: length field does not match")
    if not hmac.compare_digest(kid, _key_id(payload)):
        raise WireError("public key: key id does not match its content")
    return kid, payload


# --------------------------------------------------------------------------- key shares
class KeyShare:
    """One party's Shamir share S(index) of the secret, in R_q (coefficient form).

    Holds no usable key alone: fewer than T shares are independent of s (Shamir).
    """

    def __init__(self, params: ThresholdParams, key_id: bytes, index: int, residues: np.ndarray):
        if not 1 <= index <= params.parties:
            raise CryptoError(f"share index {index} outside 1..{params.parties}")
        shape = (len(params.primes), params.poly_modulus_degree)
        r = np.asarray(residues)
        if r.shape != shape or r.dtype != _U64 or np.any(r >= params_moduli(params)[:, None]):
            raise CryptoError("share residues have the wrong shape or are not reduced")
        if len(key_id) != 32:
            raise CryptoError("key id must be 32 bytes")
        self._params = params
        self._key_id = bytes(key_id)
        self._index = int(index)
        self._share = np.array(r, dtype=_U64, copy=True)
        self._share_ntt: np.ndarray | None = None

    @property
    def params(self) -> ThresholdParams:
        return self._params

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def index(self) -> int:
        return self._index

    def residues(self) -> np.ndarray:
        """A copy of the share's residues (tests and re-sharing)."""
        return self._share.copy()

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    def __repr__(self) -> str:
        return f"KeyShare(index={self._index}, key_id={self._key_id.hex()[:16]}...)"

    def wipe(self) -> None:
        """Overwrite the share in memory (best effort; see :func:`deal`)."""
        self._share.fill(0)
        if self._share_ntt is not None:
            self._share_ntt.fill(0)

    def _ntt(self) -> np.ndarray:
        if self._share_ntt is None:
            self._share_ntt = _rns(self._params).ntt(self._share)
        return self._share_ntt

    # ------------------------------------------------------------------ decryption
    def partial_decrypt(
        self,
        aggregate: bytes,
        participants: Sequence[int],
        mask: np.ndarray | None = None,
        min_count: int = 1,
    ) -> bytes:
        """This party's partial decryption of ``aggregate`` for the participant set P.

        The caller (protocol layer) must first check that the aggregate sums at least k_min
        distinct signed updates of the current round: this function cannot tell an aggregate
        from a single ciphertext (the count field is the server's claim).

        Parameters
        ----------
        aggregate : bytes
            The aggregate blob (validated here: kind, parameters, key id, every residue).
        participants : sequence of int
            P, exactly ``threshold`` distinct party indices including this one. The Lagrange
            coefficient depends on P, so P is fixed before anyone computes a partial; if one
            of P drops out, the round asks a new set (each request counts against
            ``max_decryptions``).
        mask : ndarray, optional
            uint64 (ciphertexts, N) below 2^compress_bits added to the partial (see
            :func:`derive_mask`); the finishing party removes it.
        min_count : int
            Refuse aggregates that declare fewer summands (pass k_min).
        """
        p = self._params
        ps = _check_participants(p, participants)
        if self._index not in ps:
            raise CryptoError(f"party {self._index} is not among the participants {list(ps)}")
        msk = None if mask is None else _check_mask(p, mask)
        _, c1, count = _load_aggregate(p, aggregate, self._key_id)
        if count < min_count:
            raise CryptoError(
                f"refusing to decrypt an aggregate of {count} update(s): at least {min_count} "
                "are required"
            )
        rns = _rns(p)
        lam = lagrange_at_zero(p, self._index, ps)
        s_lam = rns.mul_scalars(self._ntt(), lam)
        n, nq, cts = p.poly_modulus_degree, len(p.primes), p.num_ciphertexts
        dc = np.empty((cts, n), dtype=_U64)
        # A few ciphertexts at a time: memory stays flat whatever the model size.
        for lo in range(0, cts, _CHUNK_CIPHERTEXTS):
            hi = min(cts, lo + _CHUNK_CIPHERTEXTS)
            d = rns.intt(rns.mul_pointwise(rns.ntt(c1[lo:hi]), s_lam[None]))
            e = flooding_noise((hi - lo) * n, p.flood_bits, p.primes).reshape(nq, hi - lo, n)
            d = rns.add(d, np.ascontiguousarray(e.transpose(1, 0, 2)))
            dc[lo:hi] = rns.scale_round_pow2(d, p.compress_bits)
            d.fill(0)
        s_lam.fill(0)
        masked = msk is not None
        if msk is not None:
            dc = (dc + msk) & _U64((1 << p.compress_bits) - 1)
        header = b"".join(
            [
                _U16.pack(self._index),
                b"".join(_U16.pack(x) for x in ps),
                bytes([masked]),
                aggregate_digest(aggregate),
                _U32.pack(count),
            ]
        )
        return _frame(p, KIND_PARTIAL, self._key_id, header, pack_bits(dc, p.compress_bits))

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialize (integrity-checked, not encrypted: protect it like a private key)."""
        meta = self._params.to_json().encode()
        rows = b"".join(pack_bits(self._share[j], b) for j, b in enumerate(self._params.prime_bits))
        body = b"".join(
            [
                _SHARE_MAGIC,
                bytes([_SHARE_VERSION]),
                _U32.pack(len(meta)),
                meta,
                self._key_id,
                _U16.pack(self._index),
                rows,
            ]
        )
        return body + sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes, params: ThresholdParams | None = None) -> KeyShare:
        """Inverse of :meth:`to_bytes`; ``params`` (if given) must match the file's."""
        head = len(_SHARE_MAGIC) + 1 + 4
        if len(data) < head + 32 + 2 + 32 or data[: len(_SHARE_MAGIC)] != _SHARE_MAGIC:
            raise CryptoError("not a fedpriv threshold key share")
        if data[len(_SHARE_MAGIC)] != _SHARE_VERSION:
            raise CryptoError(f"unsupported key share version {data[len(_SHARE_MAGIC)]}")
        body, digest = data[:-32], data[-32:]
        if not hmac.compare_digest(sha256(body).digest(), digest):
            raise CryptoError("key share is corrupted (digest mismatch)")
        (mlen,) = _U32.unpack_from(body, len(_SHARE_MAGIC) + 1)
        off = head
        if len(body) < off + mlen + 34:
            raise CryptoError("key share is truncated")
        try:
            file_params = ThresholdParams.from_json(body[off : off + mlen])
        except WireError as e:
            raise CryptoError(f"key share parameters are invalid: {e}") from None
        if params is not None and file_params.fingerprint_bytes() != params.fingerprint_bytes():
            raise CryptoError("key share was made for other threshold parameters")
        off += mlen
        key_id = body[off : off + 32]
        (index,) = _U16.unpack_from(body, off + 32)
        off += 34
        p = file_params
        n = p.poly_modulus_degree
        rows = []
        for q, b in zip(p.primes, p.prime_bits, strict=True):
            size = (n * b + 7) // 8
            try:
                row = unpack_bits(body[off : off + size], b, n)
            except ValueError as e:
                raise CryptoError(f"key share is malformed: {e}") from None
            if np.any(row >= _U64(q)):
                raise CryptoError("key share has an unreduced residue")
            rows.append(row)
            off += size
        if off != len(body) or len(key_id) != 32:
            raise CryptoError("key share has inconsistent lengths")
        return cls(p, key_id, index, np.stack(rows))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the share (mode 0600, atomically). A directory gets ``he_share.fpkey``."""
        target = Path(path)
        if target.is_dir():
            target = target / SHARE_FILE_NAME
        atomic_write_bytes(target, self.to_bytes(), mode=0o600)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str], params: ThresholdParams | None = None) -> KeyShare:
        """Read a share written by :meth:`save`; refuses files readable by group or others."""
        target = Path(path)
        if target.is_dir():
            target = target / SHARE_FILE_NAME
        return cls.from_bytes(read_owner_only(target, "key share"), params)


@lru_cache(maxsize=8)
def params_moduli(params: ThresholdParams) -> np.ndarray:
    return np.array(params.primes, dtype=_U64)


# --------------------------------------------------------------------------- re-sharing
def _pair_mask(params: ThresholdParams, key: bytes, context: bytes) -> np.ndarray:
    n = params.poly_modulus_degree
    rows = []
    for j, q in enumerate(params.primes):
        h = shake_256(_RESHARE_DOMAIN + context + bytes([j]) + _U32.pack(len(key)) + key)
        raw = np.frombuffer(h.digest(16 * n), dtype="<u8").reshape(n, 2)
        # 128 random bits reduced mod q: statistically uniform (distance < 2^-90).
        qu, two32 = _U64(q), _U64((1 << 32) % q)
        x = (raw[:, 0] % qu) * two32 % qu * two32 % qu  # hi * 2^64 mod q
        rows.append((x + raw[:, 1] % qu) % qu)
    return np.stack(rows)


def _reshare_context(
    key_id: bytes, new_index: int, helpers: tuple[int, ...], a: int, b: int
) -> bytes:
    return (
        key_id
        + _U16.pack(new_index)
        + b"".join(_U16.pack(h) for h in helpers)
        + _U16.pack(a)
        + _U16.pack(b)
    )


def reshare_contribution(
    share: KeyShare,
    new_index: int,
    helpers: Sequence[int],
    pair_keys: Mapping[int, bytes],
) -> bytes:
    """A helper's part of a new share S(new_index), for a party added after dealing.

    T helpers H each send lambda_i^H(new) S(i) + z_i to the new party, where the z_i sum to
    zero: z_i = sum_{j in H, j != i} +-PRF(k_ij), with k_ij a secret that helpers i and j share
    (``pair_keys[j]``, e.g. from an X25519 exchange between their identity keys). The new party
    learns only the sum, S(new); one contribution alone is masked by the other helpers' keys.
    The caller sends each contribution over a private channel (sealed to the new party).
    Passive security only: a helper who sends garbage produces a wrong share, found at the
    first decryption it joins.
    """
    p = share.params
    hs = _check_participants(p, helpers)
    if share.index not in hs:
        raise CryptoError(f"party {share.index} is not among the helpers {list(hs)}")
    if not 1 <= new_index <= p.parties or new_index in hs:
        raise CryptoError(f"new index {new_index} must be in 1..{p.parties} and not a helper")
    rns = _rns(p)
    lam = []
    for q in p.primes:
        num, den = 1, 1
        for j in hs:
            if j != share.index:
                num = num * (new_index - j) % q
                den = den * (share.index - j) % q
        lam.append(num * pow(den, -1, q) % q)
    contrib = rns.mul_scalars(share.residues(), lam)
    for j in hs:
        if j == share.index:
            continue
        key = pair_keys.get(j)
        if not isinstance(key, bytes) or len(key) < 16:
            raise CryptoError(f"missing pair key (>= 16 bytes) shared with helper {j}")
        a, b = min(j, share.index), max(j, share.index)
        z = _pair_mask(p, key, _reshare_context(share.key_id, new_index, hs, a, b))
        contrib = rns.add(contrib, z) if share.index == a else rns.sub(contrib, z)
    header = _U16.pack(share.index) + _U16.pack(new_index) + b"".join(_U16.pack(x) for x in hs)
    payload = b"".join(pack_bits(contrib[j], b) for j, b in enumerate(p.prime_bits))
    contrib.fill(0)
    return _frame(p, KIND_RESHARE, share.key_id, header, payload)


def assemble_share(
    params: ThresholdParams,
    public_key: bytes,
    new_index: int,
    contributions: Sequence[bytes],
) -> KeyShare:
    """The new party sums the T helpers' contributions into its share S(new_index)."""
    kid, _ = _load_public_key(params, public_key)
    n, nq = params.poly_modulus_degree, len(params.primes)
    hsize = 4 + 2 * params.threshold
    psize = sum((n * b + 7) // 8 for b in params.prime_bits)
    rns = _rns(params)
    acc = np.zeros((nq, n), dtype=_U64)
    seen: set[int] = set()
    helpers: tuple[int, ...] | None = None
    for blob in contributions:
        _, header, payload = _unframe(blob, params, KIND_RESHARE, kid, hsize, psize)
        (frm,) = _U16.unpack_from(header, 0)
        (to,) = _U16.unpack_from(header, 2)
        hs = tuple(_U16.unpack_from(header, 4 + 2 * i)[0] for i in range(params.threshold))
        if to != new_index:
            raise WireError(f"re-sharing contribution is for party {to}, not {new_index}")
        if helpers is None:
            helpers = _check_participants(params, hs)
        if hs != helpers or frm not in helpers or frm in seen:
            raise WireError("re-sharing contributions disagree on the helpers or repeat one")
        seen.add(frm)
        off = 0
        for j, (q, b) in enumerate(zip(params.primes, params.prime_bits, strict=True)):
            size = (n * b + 7) // 8
            row = _unpack(payload[off : off + size], b, n, "re-sharing contribution")
            if np.any(row >= _U64(q)):
                raise WireError("re-sharing contribution: a residue is not below its prime")
            acc[j] = (acc[j] + row) % _U64(q)
            off += size
    if helpers is None or seen != set(helpers):
        raise CryptoError(f"need a contribution from each of the {params.threshold} helpers")
    del rns
    return KeyShare(params, kid, new_index, acc)


# --------------------------------------------------------------------------- client
class ThresholdEncryptor:
    """A client's encryptor: the collective public key only (it can decrypt nothing)."""

    def __init__(self, params: ThresholdParams, public_key: bytes) -> None:
        import tenseal.sealapi as seal

        from fedpriv.crypto._scratch import load_from_bytes

        self._params = params
        self._key_id, pk_bytes = _load_public_key(params, public_key)
        ctx = _seal_context(params)
        pk = seal.PublicKey()
        try:
            load_from_bytes(pk, ctx, pk_bytes)
        except Exception as e:  # SEAL raises several types on malformed data
            raise WireError(f"public key: SEAL rejected it ({e})") from None
        if not seal.is_valid_for(pk, ctx):
            raise WireError("public key: not valid for the parameters")
        self._ctx = ctx
        self._encryptor = seal.Encryptor(ctx, pk)
        self._encoder = seal.BatchEncoder(ctx)
        self._seal = seal

    @property
    def params(self) -> ThresholdParams:
        return self._params

    @property
    def key_id(self) -> bytes:
        return self._key_id

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    def encrypt_slots(self, slots: np.ndarray) -> bytes:
        """Encrypt int64 slot values (|v| < t/2, length ciphertexts x N) as an update blob."""
        from fedpriv.crypto._scratch import save_to_bytes

        p = self._params
        n, nq = p.poly_modulus_degree, len(p.primes)
        rns = _rns(p)
        c0c = np.empty((p.num_ciphertexts, n), dtype=_U64)
        c1 = np.empty((p.num_ciphertexts, nq, n), dtype=_U64)
        for i in range(p.num_ciphertexts):
            pt = self._seal.Plaintext()
            self._encoder.encode(slots[i * n : (i + 1) * n].tolist(), pt)
            ct = self._seal.Ciphertext()
            self._encryptor.encrypt(pt, ct)
            polys = _seal_polys(save_to_bytes(ct), n, nq, ntt=False)
            c0c[i] = rns.scale_round_pow2(polys[0], p.compress_bits)
            c1[i] = polys[1]
        return _frame(p, KIND_UPDATE, self._key_id, b"", _pack_ciphertext(p, c0c, c1))

    def encrypt(
        self,
        values: np.ndarray,
        weight: int,
        int_noise: np.ndarray | None = None,
        rng: DpRandom | None = None,
    ) -> EncryptedUpdate:
        """Encrypt ``[w*clip(x), w, 1]`` exactly as :meth:`KeyHolder.encrypt` encodes it.

        Stochastic rounding draws from ``rng``, the device's DP randomness (default: OS CSPRNG).
        """
        p = self._params
        slots, w, clipped = bfv_update_slots(p, p.num_coefficients, values, weight, int_noise, rng)
        return EncryptedUpdate(self.encrypt_slots(slots), clipped, w, w != weight)


# --------------------------------------------------------------------------- server
def _load_update(
    params: ThresholdParams, blob: bytes, key_id: bytes
) -> tuple[np.ndarray, np.ndarray]:
    _, _, payload = _unframe(blob, params, KIND_UPDATE, key_id, 0, params.ciphertext_payload_bytes)
    return _unpack_ciphertext(params, payload, "update")


def _load_aggregate(
    params: ThresholdParams, blob: bytes, key_id: bytes
) -> tuple[np.ndarray, np.ndarray, int]:
    _, header, payload = _unframe(
        blob, params, KIND_AGGREGATE, key_id, 4, params.ciphertext_payload_bytes
    )
    (count,) = _U32.unpack(header)
    if not 1 <= count <= params.max_clients:
        raise WireError(f"aggregate: count {count} outside 1..{params.max_clients}")
    c0c, c1 = _unpack_ciphertext(params, payload, "aggregate")
    return c0c, c1, count


def _load_aggregate_c0(
    params: ThresholdParams, blob: bytes, key_id: bytes
) -> tuple[np.ndarray, int]:
    """The compressed c0 and count of an aggregate: all a combiner needs (c1 is not parsed)."""
    _, header, payload = _unframe(
        blob, params, KIND_AGGREGATE, key_id, 4, params.ciphertext_payload_bytes
    )
    (count,) = _U32.unpack(header)
    if not 1 <= count <= params.max_clients:
        raise WireError(f"aggregate: count {count} outside 1..{params.max_clients}")
    m, b = params.num_coefficients, params.compress_bits
    c0c = _unpack(payload[: (m * b + 7) // 8], b, m, "aggregate")
    return c0c.reshape(params.num_ciphertexts, params.poly_modulus_degree), count


def aggregate_count(params: ThresholdParams, blob: bytes, key_id: bytes) -> int:
    """The number of summands an aggregate blob declares (the server's claim: framing checked)."""
    return _load_aggregate_c0(params, blob, key_id)[1]


@dataclass(frozen=True)
class PartialInfo:
    """What one partial decryption is bound to (read from its validated frame)."""

    party: int
    participants: tuple[int, ...]
    masked: bool
    aggregate_digest: bytes
    count: int


def partial_info(params: ThresholdParams, blob: bytes, key_id: bytes) -> PartialInfo:
    """Validate one partial decryption's frame and read its binding (the relay checks each
    partial before combining, so a bad one is attributed to its sender)."""
    t = params.threshold
    _, header, _ = _unframe(
        blob,
        params,
        KIND_PARTIAL,
        key_id,
        _partial_header_size(params),
        params.partial_payload_bytes,
    )
    (idx,) = _U16.unpack_from(header, 0)
    ps = tuple(_U16.unpack_from(header, 2 + 2 * i)[0] for i in range(t))
    flag = header[2 + 2 * t]
    (cnt,) = _U32.unpack_from(header, 35 + 2 * t)
    if flag not in (0, 1):
        raise WireError("partial decryption: masked flag must be 0 or 1")
    return PartialInfo(idx, ps, bool(flag), bytes(header[3 + 2 * t : 35 + 2 * t]), cnt)


class ThresholdAggregator:
    """The server: validates update blobs and sums them, one at a time. Holds no key.

    Built from public parameters and the key id (public). A refused blob changes nothing.
    """

    def __init__(self, params: ThresholdParams, key_id: bytes) -> None:
        if len(key_id) != 32:
            raise CryptoError("key id must be 32 bytes")
        self._params = params
        self._key_id = bytes(key_id)
        self._q = params_moduli(params)[:, None]
        self._mask = _U64((1 << params.compress_bits) - 1)
        self._lock = threading.Lock()
        self._c0: np.ndarray | None = None
        self._c1: np.ndarray | None = None
        self._count = 0

    @property
    def params(self) -> ThresholdParams:
        return self._params

    @property
    def count(self) -> int:
        return self._count

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    def validate(self, blob: bytes) -> None:
        """Check an update blob completely without adding it. Raises :class:`WireError`."""
        _load_update(self._params, blob, self._key_id)

    def add(self, blob: bytes) -> None:
        """Validate ``blob`` and add it to the running sum (c1 mod q_j, compressed c0 mod 2^b)."""
        with self._lock:
            if self._count >= self._params.max_clients:
                raise WireError(
                    f"too many summands: already {self._count} = max_clients; "
                    "more would overflow the plaintext range and the noise budget"
                )
            c0c, c1 = _load_update(self._params, blob, self._key_id)
            if self._c0 is None or self._c1 is None:
                self._c0, self._c1 = c0c, c1
            else:
                self._c0 += c0c
                self._c0 &= self._mask
                self._c1 += c1
                np.minimum(self._c1, self._c1 - self._q, out=self._c1)
            self._count += 1

    def result(self) -> bytes:
        """The aggregate blob (what the decrypting parties receive)."""
        with self._lock:
            if self._c0 is None or self._c1 is None:
                raise WireError("no update has been accepted: nothing to aggregate")
            payload = _pack_ciphertext(self._params, self._c0, self._c1)
            return _frame(
                self._params, KIND_AGGREGATE, self._key_id, _U32.pack(self._count), payload
            )

    def reset(self) -> None:
        with self._lock:
            self._c0 = self._c1 = None
            self._count = 0


def combine_partials(
    params: ThresholdParams, aggregate: bytes, partials: Sequence[bytes], key_id: bytes
) -> bytes:
    """Sum exactly T validated partial decryptions of ``aggregate`` with its c0 (mod 2^b).

    Run by the server (relay) or any party. Every partial must carry the same participant set
    P, be bound to this aggregate, come from a distinct member of P, and agree on masking.
    Unmasked, the result reveals the aggregate to whoever holds it; masked, it is uniformly
    random to anyone without the mask key.
    """
    c0c, count = _load_aggregate_c0(params, aggregate, key_id)
    digest = aggregate_digest(aggregate)
    if len(partials) != params.threshold:
        raise CryptoError(
            f"{len(partials)} partial decryptions, the threshold is {params.threshold}: "
            "fewer cannot decrypt (and more are never needed)"
        )
    hsize = _partial_header_size(params)
    acc = c0c.copy()
    mask = _U64((1 << params.compress_bits) - 1)
    ps: tuple[int, ...] | None = None
    masked: int | None = None
    seen: set[int] = set()
    t = params.threshold
    for blob in partials:
        _, header, payload = _unframe(
            blob, params, KIND_PARTIAL, key_id, hsize, params.partial_payload_bytes
        )
        (idx,) = _U16.unpack_from(header, 0)
        these = tuple(_U16.unpack_from(header, 2 + 2 * i)[0] for i in range(t))
        flag = header[2 + 2 * t]
        dig = header[3 + 2 * t : 35 + 2 * t]
        (cnt,) = _U32.unpack_from(header, 35 + 2 * t)
        if not hmac.compare_digest(dig, digest) or cnt != count:
            raise WireError(f"partial decryption of party {idx} is for another aggregate")
        if ps is None:
            try:
                ps = _check_participants(params, these)
            except CryptoError as e:
                raise WireError(f"partial decryption: {e}") from None
            masked = flag
        if these != ps or flag != masked or flag not in (0, 1):
            raise WireError("partial decryptions disagree on the participant set or masking")
        if idx not in ps or idx in seen:
            raise WireError(f"partial decryption from party {idx}: not in P or repeated")
        seen.add(idx)
        d = _unpack(payload, params.compress_bits, params.num_coefficients, "partial decryption")
        acc += d.reshape(acc.shape)
        acc &= mask
    assert ps is not None
    header = b"".join(_U16.pack(x) for x in ps) + bytes([masked or 0]) + digest + _U32.pack(count)
    return _frame(params, KIND_COMBINED, key_id, header, pack_bits(acc, params.compress_bits))


@dataclass(frozen=True)
class CombinedInfo:
    """What a combined blob is bound to (read from its validated header)."""

    participants: tuple[int, ...]
    masked: bool
    aggregate_digest: bytes
    count: int


def combined_info(params: ThresholdParams, combined: bytes, key_id: bytes) -> CombinedInfo:
    """The participant set, masking, aggregate digest and count of a combined blob.

    The finishing party needs P and the digest to derive the masks before
    :func:`finish_decryption`. The whole blob is validated (framing, size, digest).
    """
    t = params.threshold
    _, header, _ = _unframe(
        combined,
        params,
        KIND_COMBINED,
        key_id,
        _combined_header_size(params),
        params.partial_payload_bytes,
    )
    ps = tuple(_U16.unpack_from(header, 2 * i)[0] for i in range(t))
    (count,) = _U32.unpack_from(header, 33 + 2 * t)
    if header[2 * t] not in (0, 1):
        raise WireError("combined decryption: masked flag must be 0 or 1")
    try:
        _check_participants(params, ps)
    except CryptoError as e:
        raise WireError(f"combined decryption: {e}") from None
    return CombinedInfo(ps, bool(header[2 * t]), bytes(header[2 * t + 1 : 2 * t + 33]), count)


def finish_decryption(
    params: ThresholdParams,
    combined: bytes,
    key_id: bytes,
    masks: Mapping[int, np.ndarray] | None = None,
    expected_aggregate: bytes | None = None,
) -> DecryptedAggregate:
    """Remove the masks (if any), scale by t/2^b, round, decode: the exact integer sum.

    ``expected_aggregate`` (the :func:`aggregate_digest` of the aggregate this party expects,
    e.g. one it recomputed from the round's signed updates) is checked against the digest the
    combined blob is bound to, so a relay cannot substitute another round's aggregate.

    Raises
    ------
    WireError
        A malformed combined blob.
    CryptoError
        Masks missing or not matching, or the plaintext fails its sanity checks (a wrong or
        garbage partial decryption, the wrong key, or an overflow): never a silent wrong sum.
    """
    t = params.threshold
    _, header, payload = _unframe(
        combined,
        params,
        KIND_COMBINED,
        key_id,
        _combined_header_size(params),
        params.partial_payload_bytes,
    )
    ps = tuple(_U16.unpack_from(header, 2 * i)[0] for i in range(t))
    masked = header[2 * t]
    digest = header[2 * t + 1 : 2 * t + 33]
    (count,) = _U32.unpack_from(header, 33 + 2 * t)
    if expected_aggregate is not None and not hmac.compare_digest(digest, expected_aggregate):
        raise WireError("combined decryption is for another aggregate than the one expected")
    b = params.compress_bits
    shape = (params.num_ciphertexts, params.poly_modulus_degree)
    acc = _unpack(payload, b, params.num_coefficients, "combined decryption").reshape(shape)
    mod = _U64((1 << b) - 1)
    if masked:
        if masks is None or set(masks) != set(ps):
            raise CryptoError(f"the partials are masked: need the masks of parties {list(ps)}")
        for i in ps:
            acc = (acc + (mod + _U64(1) - _check_mask(params, masks[i]))) & mod
    elif masks:
        raise CryptoError("masks given but the partial decryptions were not masked")
    tt = params.plain_modulus
    plain = ((acc * _U64(tt) + _U64(1 << (b - 1))) >> _U64(b)) % _U64(tt)
    slots = _decoder(params).decode(plain).reshape(-1)
    return _check_plaintext(params, slots, count)


def _check_plaintext(params: ThresholdParams, ints: np.ndarray, count: int) -> DecryptedAggregate:
    nv = params.num_values
    c, total = int(ints[nv + 1]), int(ints[nv])
    limit = c * (params.quant_scale * params.max_weight * params.value_range + 1)
    if (
        c != count
        or np.any(ints[nv + 2 :] != 0)
        or (c >= 1 and np.abs(ints[:nv]).max() > limit)
        or not 0 <= total <= c * params.max_weight
    ):
        raise CryptoError(
            "threshold decryption fails its sanity checks: a wrong or corrupted partial "
            "decryption, the wrong key, or a malformed summand"
        )
    return DecryptedAggregate(ints[:nv].astype(np.float64) / params.quant_scale, total, c)


def threshold_decrypt(
    params: ThresholdParams,
    aggregate: bytes,
    partials: Sequence[bytes],
    key_id: bytes,
    masks: Mapping[int, np.ndarray] | None = None,
) -> DecryptedAggregate:
    """:func:`combine_partials` then :func:`finish_decryption`."""
    return finish_decryption(
        params, combine_partials(params, aggregate, partials, key_id), key_id, masks
    )
