"""One facade over the aggregation codecs (BFV, CKKS, plaintext) for both sides.

The server side (:func:`open_aggregator`) is built from public parameters alone; the client
side (:class:`ClientCodec`) loads the key holder's secret from its key directory.

Key directory layout (written by :func:`fedpriv.keys.deal_keys`)::

    keys/server/params.json   public parameters: all the server ever gets
    keys/client/params.json   the same public parameters
    keys/client/secret.key    HE secret (absent when encryption is off), owner-only

Threshold custody keeps other files there (public key, share index map, shares, mask key):
see :mod:`fedpriv.crypto.tcustody`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from fedpriv.crypto.plain import PlainAggregator, PlainCodec, PlainParams
from fedpriv.errors import CryptoError, WireError
from fedpriv.privacy.rng import DpRandom, OsRandom

# Plaintext runs add client-level noise on this fixed grid (units per real unit), like BFV would.
PLAIN_NOISE_GRID = 2.0**16

__all__ = [
    "PLAIN_NOISE_GRID",
    "AggregatorLike",
    "ClientCodec",
    "EncodedUpdate",
    "PublicParams",
    "load_params_file",
    "open_aggregator",
    "params_from_dict",
]


class PublicParams(Protocol):
    @property
    def num_values(self) -> int: ...
    @property
    def max_clients(self) -> int: ...
    @property
    def scheme(self) -> str: ...
    @property
    def max_blob_bytes(self) -> int: ...

    def fingerprint(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


class AggregatorLike(Protocol):
    @property
    def count(self) -> int: ...

    def add(self, blob: bytes) -> None: ...
    def result(self) -> bytes: ...
    def reset(self) -> None: ...


def params_from_dict(d: Any) -> PublicParams:
    """Parse public parameters (validated) from their JSON form."""
    if isinstance(d, dict) and d.get("scheme") == "off":
        return PlainParams.from_dict(d)
    if isinstance(d, dict) and "primes" in d:  # threshold custody (fedpriv.crypto.tparams)
        from fedpriv.crypto.tparams import ThresholdParams

        return ThresholdParams.from_dict(d)
    from fedpriv.crypto import HEParams

    return HEParams.from_dict(d)


def load_params_file(path: Path) -> PublicParams:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CryptoError(
            f"{path}: public parameter file not found (run `fedpriv keys init`?)"
        ) from None
    except (OSError, ValueError) as exc:
        raise CryptoError(f"{path}: cannot read public parameters ({exc})") from None
    try:
        return params_from_dict(d)
    except WireError as exc:
        raise CryptoError(f"{path}: {exc}") from None


def open_aggregator(params: PublicParams, key_id: bytes | None = None) -> AggregatorLike:
    """The server's running sum; threshold custody also needs the (public) key id."""
    if isinstance(params, PlainParams):
        return PlainAggregator(params)
    from fedpriv.crypto.tparams import ThresholdParams

    if isinstance(params, ThresholdParams):
        from fedpriv.crypto.threshold import ThresholdAggregator

        if key_id is None:
            raise CryptoError("threshold custody: the aggregator needs the public key's id")
        return ThresholdAggregator(params, key_id)
    from fedpriv.crypto import Aggregator, HEParams

    assert isinstance(params, HEParams)
    return Aggregator(params)


@dataclass(frozen=True)
class EncodedUpdate:
    blob: bytes
    clipped: int
    weight_used: int
    weight_capped: bool
    encrypted: bool


class ClientCodec:
    """What a key-holding client uses to encode its update and read the global model."""

    def __init__(self, params: PublicParams, holder: Any | None) -> None:
        self.params = params
        self._holder = holder
        self._plain = PlainCodec(params) if isinstance(params, PlainParams) else None

    @property
    def encrypted(self) -> bool:
        return self._plain is None

    @property
    def holder(self) -> Any:
        """The key material: a ``KeyHolder``, a ``ThresholdKeyHolder``, or None (plaintext)."""
        return self._holder

    @property
    def custody(self) -> str:
        """``shared`` (one secret every client holds), ``threshold``, or ``none`` (plaintext)."""
        if self._plain is not None:
            return "none"
        return str(getattr(self.params, "custody", "shared"))

    @classmethod
    def load(cls, key_dir: Path) -> ClientCodec:
        params = load_params_file(key_dir / "params.json")
        if isinstance(params, PlainParams):
            return cls(params, None)
        from fedpriv.crypto.tparams import ThresholdParams

        if isinstance(params, ThresholdParams):
            from fedpriv.crypto.tcustody import ThresholdKeyHolder

            return cls(params, ThresholdKeyHolder.load(key_dir, params))
        from fedpriv.crypto import KeyHolder

        secret = key_dir / "secret.key"
        if not secret.exists():
            raise CryptoError(
                f"{secret}: HE secret key not found; this client cannot decrypt the global model"
            )
        holder = KeyHolder.load(secret)
        if holder.params.fingerprint() != params.fingerprint():
            raise CryptoError(f"{key_dir}: secret key and public parameters do not belong together")
        return cls(params, holder)

    def encode(
        self,
        values: np.ndarray,
        weight: int,
        noise_std: float = 0.0,
        rng: DpRandom | None = None,
    ) -> EncodedUpdate:
        """Encode (and encrypt) ``[w*x, w, 1]``.

        ``noise_std`` > 0 adds this client's share of distributed discrete-Gaussian noise
        (client-level DP) in the quantized domain, before encryption. Noise and stochastic
        rounding draw from ``rng``, the device's DP randomness (default: the OS CSPRNG).
        """
        from fedpriv.privacy.client_level import discrete_gaussian

        rng = rng or OsRandom()
        n = int(values.size)
        if self._plain is not None:
            if noise_std > 0:
                # Same discrete mechanism as under BFV, on a fixed grid of 2^-16 units.
                values = (
                    values.astype(np.float64)
                    + discrete_gaussian(noise_std * PLAIN_NOISE_GRID, n, rng) / PLAIN_NOISE_GRID
                )
            return EncodedUpdate(self._plain.encode(values, weight), 0, weight, False, False)
        assert self._holder is not None
        noise = None
        if noise_std > 0:
            scale = float(self._holder.params.quant_scale)
            noise = discrete_gaussian(noise_std * scale, n, rng)
        upd = self._holder.encrypt(values.astype(np.float32), weight, int_noise=noise, rng=rng)
        return EncodedUpdate(upd.blob, upd.clipped, upd.weight_used, upd.weight_capped, True)

    @property
    def quant_scale(self) -> float:
        """Quantization units per real unit of the encoded values (the noise grid when plain)."""
        if self._plain is not None:
            return PLAIN_NOISE_GRID
        assert self._holder is not None
        return float(self._holder.params.quant_scale)

    def decode(self, blob: bytes) -> tuple[np.ndarray, float, int]:
        """Return (weighted mean as float32, total weight, number of summands)."""
        if self._plain is not None:
            s, w, n = self._plain.decode(blob)
        else:
            assert self._holder is not None
            agg = self._holder.decrypt(blob)
            s, w, n = agg.weighted_sum, float(agg.total_weight), int(agg.count)
        if w <= 0:
            raise WireError("aggregate has zero total weight")
        return (s / w).astype(np.float32), w, n
