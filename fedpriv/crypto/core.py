"""Key holder (clients) and aggregator (server) for encrypted weighted FedAvg."""

from __future__ import annotations

import os
import struct
import threading
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any, NoReturn, Protocol

import numpy as np

from fedpriv.crypto import wire
from fedpriv.crypto.bfv import BfvPublic, BfvSecret
from fedpriv.crypto.ckks import CkksPublic, CkksSecret
from fedpriv.crypto.params import KIND_AGGREGATE, KIND_UPDATE, HEParams
from fedpriv.errors import CryptoError, WireError
from fedpriv.fileio import atomic_write_bytes, read_owner_only
from fedpriv.privacy.rng import DpRandom, OsRandom

__all__ = [
    "KEY_FILE_NAME",
    "Aggregator",
    "DecryptedAggregate",
    "EncryptedUpdate",
    "KeyHolder",
    "bfv_update_slots",
    "server_context_bytes",
    "stochastic_round",
]

KEY_FILE_NAME = "he_secret.fpkey"
_KEY_MAGIC = b"FPHEKEY\x00"
_KEY_VERSION = 1
_U32 = struct.Struct(">I")
_ANY_KIND = frozenset({KIND_UPDATE, KIND_AGGREGATE})
_UPDATE_ONLY = frozenset({KIND_UPDATE})


@dataclass(frozen=True)
class EncryptedUpdate:
    """One client's encrypted update and what encoding did to it."""

    blob: bytes
    clipped: int
    """Number of values outside [-value_range, value_range] that were clipped."""
    weight_used: int
    """The weight actually encoded (min(weight, max_weight))."""
    weight_capped: bool


@dataclass(frozen=True)
class DecryptedAggregate:
    """A decrypted sum: sum_k w_k x_k, sum_k w_k and the number of summands."""

    weighted_sum: np.ndarray
    total_weight: int
    count: int

    def mean(self) -> np.ndarray:
        """Weighted FedAvg mean (float64)."""
        if self.total_weight <= 0:
            raise ValueError("total weight is 0: the weighted mean is undefined")
        return self.weighted_sum / self.total_weight


def stochastic_round(v: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Round to a neighbouring integer with probabilities that make the result unbiased.

    ``uniforms`` (same shape as ``v``, in (0, 1)) come from the device's DP randomness: the
    rounding is part of the mechanism, so it must be as unpredictable as the noise.
    """
    floor = np.floor(v)
    return (floor + (uniforms < (v - floor))).astype(np.int64)


class _SlotParams(Protocol):
    @property
    def num_values(self) -> int: ...
    @property
    def max_weight(self) -> int: ...
    @property
    def value_range(self) -> float: ...
    @property
    def quant_scale(self) -> float: ...


def _checked_update(p: _SlotParams, values: np.ndarray, weight: int) -> tuple[np.ndarray, int, int]:
    """(values clipped to [-R, R] as float64, capped weight, number clipped); raises ValueError."""
    x = np.asarray(values)
    if x.dtype.kind not in "fiu":
        raise ValueError(f"values must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.float64, copy=False).reshape(-1)
    if x.size != p.num_values:
        raise ValueError(f"expected {p.num_values} values, got {x.size}")
    if np.isnan(x).any():
        raise ValueError("values contain NaN")
    if not isinstance(weight, (int, np.integer)) or isinstance(weight, bool):
        raise ValueError(f"weight must be an integer, got {weight!r}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    w = min(int(weight), p.max_weight)
    r = p.value_range
    clipped = int(np.count_nonzero(np.abs(x) > r))
    return np.clip(x, -r, r), w, clipped


def bfv_update_slots(
    p: _SlotParams,
    padded: int,
    values: np.ndarray,
    weight: int,
    int_noise: np.ndarray | None = None,
    rng: DpRandom | None = None,
) -> tuple[np.ndarray, int, int]:
    """The BFV slots of an update: ``[round(s*w*clip(x)) (+ noise), w, 1, 0...]``.

    Shared by shared-key and threshold custody, so an encoded slot means the same under both.
    Returns (int64 slots of length ``padded``, weight used, number of clipped values).
    """
    xc, w, clipped = _checked_update(p, values, weight)
    nv = p.num_values
    slots = np.zeros(padded, dtype=np.int64)
    # Quantize the product w*x (not x): the weight multiplies precision, not error. The rounding
    # is part of the mechanism: its uniforms come from the device's DP randomness.
    slots[:nv] = stochastic_round(xc * (p.quant_scale * w), (rng or OsRandom()).uniform(nv))
    if int_noise is not None:
        noise = np.asarray(int_noise)
        if noise.shape != (nv,) or noise.dtype.kind != "i":
            raise ValueError(f"int_noise must be {nv} integers")
        slots[:nv] += noise.astype(np.int64)
    slots[nv] = w
    slots[nv + 1] = 1
    return slots, w, clipped


def _public(params: HEParams) -> BfvPublic | CkksPublic:
    return BfvPublic(params) if params.scheme == "bfv" else CkksPublic(params)


def _load_entries(public: BfvPublic | CkksPublic, frame: wire.Frame) -> list[Any]:
    """Decode a checked frame's ciphertexts (each through SEAL's checks)."""
    if isinstance(public, BfvPublic):
        return [public.load(e, frame.kind, i, frame.version) for i, e in enumerate(frame.entries)]
    return [public.load(e, frame.kind, i) for i, e in enumerate(frame.entries)]


def server_context_bytes(params: HEParams) -> bytes:
    """Everything the server holds besides ``params``: serialized parameters, no key."""
    return _public(params).context_bytes()


def _no_pickle(obj: object) -> NoReturn:
    raise TypeError(f"{type(obj).__name__} cannot be pickled; use its bytes/save methods")


class KeyHolder:
    """A client's HE secret: encrypts updates and decrypts aggregates.

    Every client of a federation holds the same secret key; the server never does. A server
    colluding with one client can therefore read every individual update (shared-key design).
    """

    def __init__(self, params: HEParams, secret: bytes | None = None) -> None:
        self._params = params
        self._backend: BfvSecret | CkksSecret = (
            BfvSecret(params, secret) if params.scheme == "bfv" else CkksSecret(params, secret)
        )

    @classmethod
    def generate(cls, params: HEParams) -> KeyHolder:
        """Make a fresh secret key for ``params``."""
        return cls(params)

    @property
    def params(self) -> HEParams:
        return self._params

    def secret_key_bytes(self) -> bytes:
        """The raw serialized SEAL secret key (for tests that look for leaks)."""
        return self._backend.secret_key_bytes()

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    # ------------------------------------------------------------------ encryption
    def encrypt(
        self,
        values: np.ndarray,
        weight: int,
        int_noise: np.ndarray | None = None,
        rng: DpRandom | None = None,
        wire_version: int | None = None,
    ) -> EncryptedUpdate:
        """Encrypt ``[w*clip(x), w, 1]`` as an update blob.

        Parameters
        ----------
        values : ndarray
            The flattened model (any shape with ``num_values`` elements, any real dtype).
        weight : int
            The client's example count; capped at ``max_weight`` (reported, never silent).
        int_noise : ndarray, optional
            BFV only: integer noise (in quantization units, i.e. real noise x ``quant_scale``)
            added to the quantized values before encryption, so the decrypted sum carries the
            noise of all clients and nobody sees an un-noised sum (distributed DP).
        rng : DpRandom, optional
            Source of the stochastic rounding (default: the OS CSPRNG).
        wire_version : int, optional
            Default: what :func:`fedpriv.crypto.wire.version_for` says (BFV: 2, bit-packed).
            1 writes SEAL's own serialization, as earlier releases did (tests).

        Raises
        ------
        ValueError
            Wrong number of values, NaN values, or a negative weight.
        """
        p = self._params
        if p.scheme == "bfv":
            padded = p.num_ciphertexts * p.slots_per_ciphertext
            slots, w, clipped = bfv_update_slots(p, padded, values, weight, int_noise, rng)
        else:
            xc, w, clipped = _checked_update(p, values, weight)
            if int_noise is not None:
                raise ValueError("int_noise (distributed DP) needs the BFV scheme")
            slots = np.zeros(p.num_slots, dtype=np.float64)
            slots[: p.num_values] = xc * w
            slots[p.num_values] = w
            slots[p.num_values + 1] = 1
        version = wire.version_for(p) if wire_version is None else wire_version
        if isinstance(self._backend, BfvSecret):
            entries = self._backend.encrypt(slots, version)
        else:
            entries = self._backend.encrypt(slots)
        blob = wire.pack(p, KIND_UPDATE, entries, version)
        return EncryptedUpdate(blob, clipped, w, w != weight)

    # ------------------------------------------------------------------ decryption
    def decrypt(self, blob: bytes) -> DecryptedAggregate:
        """Validate and decrypt an aggregate (or a single update) blob.

        Raises
        ------
        WireError
            The blob is malformed or made for other parameters.
        CryptoError
            The plaintext fails its sanity checks (wrong key, a summand that no key holder
            produced, or an overflow).
        """
        p = self._params
        frame = wire.unpack_frame(blob, p, _ANY_KIND)
        cts = _load_entries(self._backend.public, frame)
        slots = self._backend.decrypt(cts)
        nv = p.num_values
        if isinstance(self._backend, BfvSecret):
            ints = slots
            count, total = int(ints[nv + 1]), int(ints[nv])
            limit = count * (p.quant_scale * p.max_weight * p.value_range + 1)
            if np.any(ints[nv + 2 :] != 0) or (count >= 1 and np.abs(ints[:nv]).max() > limit):
                raise CryptoError("aggregate out of range: wrong key or a malformed summand")
            weighted = ints[:nv].astype(np.float64) / p.quant_scale
        else:
            tf, cf = float(slots[nv]), float(slots[nv + 1])
            total, count = round(tf), round(cf)
            if abs(tf - total) > 0.25 or abs(cf - count) > 0.25:
                raise CryptoError("CKKS weight/count slots are not integers: wrong key or noise")
            weighted = slots[:nv].astype(np.float64)
        if not 1 <= count <= p.max_clients or not 0 <= total <= count * p.max_weight:
            raise CryptoError(
                f"aggregate fails sanity checks (count {count}, total weight {total}): "
                "wrong key or corrupted aggregate"
            )
        return DecryptedAggregate(weighted, total, count)

    # ------------------------------------------------------------------ persistence
    def to_bytes(self) -> bytes:
        """Serialize params and secret (integrity-checked, not encrypted: protect it)."""
        b = self._backend
        secret = b.secret_context_bytes() if isinstance(b, CkksSecret) else b.secret_key_bytes()
        meta = self._params.to_json().encode()
        body = b"".join(
            [
                _KEY_MAGIC,
                bytes([_KEY_VERSION]),
                _U32.pack(len(meta)),
                meta,
                _U32.pack(len(secret)),
                secret,
            ]
        )
        return body + sha256(body).digest()

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyHolder:
        """Inverse of :meth:`to_bytes`; raises :class:`CryptoError` on any inconsistency."""
        head = len(_KEY_MAGIC) + 1
        if len(data) < head + 8 + 32 or data[: len(_KEY_MAGIC)] != _KEY_MAGIC:
            raise CryptoError("not a fedpriv HE key file")
        if data[len(_KEY_MAGIC)] != _KEY_VERSION:
            raise CryptoError(f"unsupported key file version {data[len(_KEY_MAGIC)]}")
        body, digest = data[:-32], data[-32:]
        if sha256(body).digest() != digest:
            raise CryptoError("key file is corrupted (digest mismatch)")
        off = head
        (n,) = _U32.unpack_from(body, off)
        off += 4
        meta = body[off : off + n]
        off += n
        if off + 4 > len(body):
            raise CryptoError("key file is truncated")
        (m,) = _U32.unpack_from(body, off)
        off += 4
        secret = body[off : off + m]
        if off + m != len(body) or len(meta) != n:
            raise CryptoError("key file has inconsistent lengths")
        try:
            params = HEParams.from_json(meta)
        except WireError as e:
            raise CryptoError(f"key file parameters are invalid: {e}") from None
        return cls(params, secret)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the key (file mode 0600, atomically). A directory gets ``he_secret.fpkey``."""
        target = Path(path)
        if target.is_dir():
            target = target / KEY_FILE_NAME
        atomic_write_bytes(target, self.to_bytes(), mode=0o600)
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyHolder:
        """Read a key written by :meth:`save`; refuses files readable by group or others."""
        target = Path(path)
        if target.is_dir():
            target = target / KEY_FILE_NAME
        return cls.from_bytes(read_owner_only(target, "key file"))


class Aggregator:
    """The server side: validates update blobs and sums them, one at a time, under encryption.

    Built from public parameters only, it holds no key and cannot decrypt. Each ``add`` fully
    validates its blob before touching the running sum, so a refused blob changes nothing.
    """

    def __init__(self, params: HEParams) -> None:
        self._params = params
        self._public = _public(params)
        self._fp = params.fingerprint_bytes()
        self._lock = threading.Lock()
        self._sum: list[Any] | None = None
        self._count = 0
        self._broken = False

    @property
    def params(self) -> HEParams:
        return self._params

    @property
    def count(self) -> int:
        """Number of accepted updates in the running sum."""
        return self._count

    def context_bytes(self) -> bytes:
        return self._public.context_bytes()

    def __reduce__(self) -> NoReturn:
        _no_pickle(self)

    def _load(self, blob: bytes) -> list[Any]:
        frame = wire.unpack_frame(blob, self._params, _UPDATE_ONLY, self._fp)
        return _load_entries(self._public, frame)

    def validate(self, blob: bytes) -> None:
        """Check an update blob completely without adding it. Raises :class:`WireError`."""
        self._load(blob)

    def add(self, blob: bytes) -> None:
        """Validate ``blob`` and add it to the running sum.

        Raises
        ------
        WireError
            The blob is invalid, or ``max_clients`` updates were already added.
        """
        with self._lock:
            if self._broken:
                raise CryptoError("aggregator is in a failed state; reset() it")
            if self._count >= self._params.max_clients:
                raise WireError(
                    f"too many summands: already {self._count} = max_clients; "
                    "more would overflow the plaintext range"
                )
            cts = self._load(blob)
            try:
                if self._sum is None:
                    self._sum = cts
                else:
                    for acc, ct in zip(self._sum, cts, strict=True):
                        self._public.add_inplace(acc, ct)
            except Exception as e:  # never expected after validation; do not keep a half sum
                self._broken = True
                raise CryptoError(f"homomorphic addition failed: {e}") from e
            self._count += 1

    def result(self) -> bytes:
        """The aggregate blob that key holders decrypt."""
        with self._lock:
            if self._broken:
                raise CryptoError("aggregator is in a failed state; reset() it")
            if self._sum is None:
                raise WireError("no update has been accepted: nothing to aggregate")
            p, pub = self._params, self._public
            if isinstance(pub, BfvPublic):
                version = wire.version_for(p)
                entries = [pub.dump(c, version) for c in self._sum]
                return wire.pack(p, KIND_AGGREGATE, entries, version)
            return wire.pack(p, KIND_AGGREGATE, [pub.dump(c) for c in self._sum])

    def reset(self) -> None:
        """Forget the running sum (start a new round)."""
        with self._lock:
            self._sum = None
            self._count = 0
            self._broken = False
