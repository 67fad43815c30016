"""Plaintext aggregation, used when encryption is off (baselines and debugging).

Same shape as the encrypted path so the strategy and clients do not branch: a client sends
``[w*x..., w, 1]`` as little-endian float32, the server sums in float64 and sends the sum back.
Sizes and values are validated before anything is added.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedpriv.errors import WireError

__all__ = ["PlainAggregator", "PlainCodec", "PlainParams"]

_MAGIC_UPDATE = b"FPPU"
_MAGIC_AGG = b"FPPA"


@dataclass(frozen=True)
class PlainParams:
    num_values: int
    max_clients: int
    scheme: str = "off"

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> PlainParams:
        if not isinstance(d, dict) or d.get("scheme") != "off":
            raise WireError("plaintext params: expected an object with scheme 'off'")
        nv, mc = d.get("num_values"), d.get("max_clients")
        if not (isinstance(nv, int) and nv > 0 and isinstance(mc, int) and mc > 0):
            raise WireError(
                "plaintext params: num_values and max_clients must be positive integers"
            )
        return cls(nv, mc)

    @property
    def max_blob_bytes(self) -> int:
        return 4 + 8 * (self.num_values + 2)


def _decode(blob: bytes, magic: bytes, dtype: str, n: int) -> np.ndarray:
    itemsize = np.dtype(dtype).itemsize
    if len(blob) != 4 + itemsize * n:
        raise WireError(f"plaintext blob has {len(blob)} bytes, expected {4 + itemsize * n}")
    if blob[:4] != magic:
        raise WireError("plaintext blob: wrong magic (not an update of this kind)")
    arr = np.frombuffer(blob, dtype=dtype, offset=4).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise WireError("plaintext blob holds non-finite values")
    return arr


class PlainAggregator:
    """Streaming float64 sum of validated plaintext updates."""

    def __init__(self, params: PlainParams) -> None:
        self.params = params
        self.reset()

    def reset(self) -> None:
        self._sum = np.zeros(self.params.num_values + 2, dtype=np.float64)
        self.count = 0

    def validate(self, blob: bytes) -> np.ndarray:
        arr = _decode(blob, _MAGIC_UPDATE, "<f4", self.params.num_values + 2)
        if arr[-1] != 1.0 or arr[-2] <= 0:
            raise WireError("plaintext update: count slot must be 1 and weight slot > 0")
        return arr

    def add(self, blob: bytes) -> None:
        if self.count >= self.params.max_clients:
            raise WireError(
                f"already {self.count} updates this round (max_clients={self.params.max_clients})"
            )
        arr = self.validate(blob)
        self._sum += arr
        self.count += 1

    def result(self) -> bytes:
        return _MAGIC_AGG + self._sum.astype("<f8").tobytes()


class PlainCodec:
    """Client side of the plaintext path (no keys)."""

    def __init__(self, params: PlainParams) -> None:
        self.params = params

    def encode(self, values: np.ndarray, weight: int) -> bytes:
        if values.shape != (self.params.num_values,):
            raise WireError(f"update has {values.size} values, expected {self.params.num_values}")
        vec = np.concatenate([values.astype(np.float64) * weight, [float(weight), 1.0]])
        return _MAGIC_UPDATE + vec.astype("<f4").tobytes()

    def decode(self, blob: bytes) -> tuple[np.ndarray, float, int]:
        arr = _decode(blob, _MAGIC_AGG, "<f8", self.params.num_values + 2)
        return arr[:-2], float(arr[-2]), round(arr[-1])
