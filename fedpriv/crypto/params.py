"""Public homomorphic-encryption parameters and the rule that chooses them.

Everything here is public: the server, every client and the privacy report may see it.

Noise rule (BFV)
----------------
Measured with ``Decryptor.invariant_noise_budget`` on seeded symmetric BFV ciphertexts with
full-range random plaintexts (TenSEAL 0.3.18 / SEAL 4.1, N = 2048 ... 16384, one to two primes):

* a fresh ciphertext has ``q_bits - t_bits - 5`` bits of budget, for every N tried;
* summing K ciphertexts cost about half a bit per doubling of K (noise adds like a random walk):
  q=32, t=20 bits: 7, 5, 4, 2 bits left for K = 1, 10, 100, 1000.

The rule keeps the worst case (noise growing linearly, a full bit per doubling) with room to spare::

    t_bits <= q_bits - FRESH_NOISE_BITS - ceil(log2 K) - NOISE_MARGIN_BITS

with ``FRESH_NOISE_BITS = 6`` (the measured 5 plus one for the budget being reported rounded down)
and ``NOISE_MARGIN_BITS = 2``. ``tests/unit/test_crypto_params.py`` checks it against SEAL.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from hashlib import sha256
from typing import Any, Literal

from fedpriv.crypto.rq import is_prime
from fedpriv.errors import CryptoError, WireError

__all__ = [
    "BFV_AUTO_N",
    "BFV_Q_CANDIDATES",
    "FRESH_NOISE_BITS",
    "MAX_PLAIN_BITS",
    "MIN_QUANT_SCALE",
    "NOISE_MARGIN_BITS",
    "HEParams",
    "max_plain_bits",
    "quant_scale_for",
]

Scheme = Literal["bfv", "ckks"]

FORMAT = "fedpriv.crypto.HEParams/1"
# Every bit of q costs 1/32 of the float32 bytes on the wire (version 2 packs coefficients to
# the bit size of their prime), so the smallest modulus that holds the sum is tried bit by bit;
# 32 bits stays the floor (precision: t grows with q).
BFV_Q_CANDIDATES = tuple(range(32, 61))
BFV_DEFAULT_N = 4096
# Automatic BFV ring degrees. N = 2048 allows at most 54 coefficient-modulus bits at 128-bit
# security (enough for q <= 48) and halves the padding of small models; N = 4096 encrypts about
# 10% more values per CPU second (benchmarks/he.py), so it stays the choice unless the smaller
# ring saves at least BFV_PADDING_SAVING of the encoded slots.
BFV_AUTO_N = (4096, 2048)
BFV_PADDING_SAVING = 0.05
CKKS_DEFAULT_N = 8192
CKKS_DEFAULT_BITS = (60, 40, 40, 60)
FRESH_NOISE_BITS = 6
NOISE_MARGIN_BITS = 2
MIN_QUANT_SCALE = 16
# Products s*w*x are formed in float64: below 2**50 they stay exact to 1/8 of a quantization step.
MAX_PLAIN_BITS = 50
# CKKS: bits kept free above the largest encoded value (coefficients may exceed slot values).
CKKS_HEADROOM_BITS = 4

_MAX_NUM_VALUES = 2**31 - 1
_MAX_CLIENTS = 2**20
_MAX_WEIGHT = 2**40
_MAX_VALUE_RANGE = 2.0**20

# Wire sizes, used for bounds (see fedpriv.crypto.wire).
WIRE_HEADER_BYTES = 4 + 1 + 1 + 1 + 32 + 4
WIRE_DIGEST_BYTES = 32
KIND_UPDATE = 1
KIND_AGGREGATE = 2


def max_plain_bits(q_data_bits: int, max_clients: int) -> int:
    """Largest plaintext-modulus bit size the noise rule allows for ``max_clients`` summands."""
    growth = math.ceil(math.log2(max_clients)) if max_clients > 1 else 0
    return min(MAX_PLAIN_BITS, q_data_bits - FRESH_NOISE_BITS - growth - NOISE_MARGIN_BITS)


def quant_scale_for(
    plain_modulus: int, max_clients: int, max_weight: int, value_range: float
) -> int:
    """Largest scale s with ``K*M*R*s + K < t/2``: the sum of K rounded products cannot wrap mod t."""
    room = plain_modulus // 2 - max_clients - 1
    if room <= 0:
        return 0
    return max(0, math.floor(room / (max_clients * max_weight * value_range)))


def _zstd_bound(raw: int) -> int:
    # zstd never expands by more than ~1/256 plus a few bytes; SEAL adds a 16-byte header.
    return raw + raw // 128 + 1024


@dataclass(frozen=True)
class HEParams:
    """Public parameters of one encrypted-aggregation setup.

    Attributes
    ----------
    scheme : {"bfv", "ckks"}
    poly_modulus_degree : int
        Ring degree N (BFV packs N values per ciphertext, CKKS N/2).
    coeff_modulus_bits : tuple of int
        Bit sizes of the ciphertext primes. With more than one prime the last is SEAL's
        key-switching prime and carries no data.
    plain_modulus : int
        BFV plaintext modulus t (a batching prime); 0 for CKKS.
    scale_bits : int
        CKKS scale 2**scale_bits; 0 for BFV.
    num_values : int
        Length of the flattened model vector.
    max_clients : int
        K, the largest number of updates summed into one aggregate.
    max_weight : int
        M, the public cap on a client's weight (example count).
    value_range : float
        R: values are clipped to [-R, R] before encoding.
    quant_scale : float
        BFV scale s applied to w*x before rounding; 0.0 for CKKS.
    """

    scheme: Scheme
    poly_modulus_degree: int
    coeff_modulus_bits: tuple[int, ...]
    plain_modulus: int
    scale_bits: int
    num_values: int
    max_clients: int
    max_weight: int
    value_range: float
    quant_scale: float

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise CryptoError("invalid HE parameters: " + "; ".join(problems))

    # ------------------------------------------------------------------ validation
    def _problems(self) -> list[str]:
        p: list[str] = []

        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        if self.scheme not in ("bfv", "ckks"):
            return [f"scheme must be 'bfv' or 'ckks', got {self.scheme!r}"]
        n = self.poly_modulus_degree
        if not is_int(n) or n < 1024 or n > 32768 or n & (n - 1):
            return [f"poly_modulus_degree must be a power of two in 1024..32768, got {n!r}"]
        bits = self.coeff_modulus_bits
        if (
            not isinstance(bits, tuple)
            or not bits
            or len(bits) > 16
            or not all(is_int(b) and 17 <= b <= 60 for b in bits)
        ):
            return [f"coeff_modulus_bits must be 1..16 integers in 17..60, got {bits!r}"]
        for name, lo, hi in (
            ("num_values", 1, _MAX_NUM_VALUES),
            ("max_clients", 1, _MAX_CLIENTS),
            ("max_weight", 1, _MAX_WEIGHT),
        ):
            v = getattr(self, name)
            if not is_int(v) or not lo <= v <= hi:
                p.append(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        r = self.value_range
        if not isinstance(r, float) or not math.isfinite(r) or not 0 < r <= _MAX_VALUE_RANGE:
            p.append(f"value_range must be a float in (0, {_MAX_VALUE_RANGE}], got {r!r}")
        if not is_int(self.plain_modulus) or not is_int(self.scale_bits):
            p.append("plain_modulus and scale_bits must be integers")
        if not isinstance(self.quant_scale, float):
            p.append(f"quant_scale must be a float, got {self.quant_scale!r}")
        if p:
            return p
        if self.scheme == "ckks":
            if self.plain_modulus != 0 or self.quant_scale != 0.0:
                p.append("ckks parameters must have plain_modulus 0 and quant_scale 0.0")
            if len(bits) < 2:
                p.append("ckks needs at least two primes (data primes + special prime)")
            elif not 20 <= self.scale_bits <= 60:
                p.append(f"scale_bits must be in 20..60, got {self.scale_bits}")
            else:
                need = self.scale_bits + _ckks_value_bits(self) + CKKS_HEADROOM_BITS
                if need > sum(bits[:-1]):
                    p.append(
                        f"ckks values need {need} bits but the data primes give {sum(bits[:-1])}"
                    )
            return p
        # BFV
        t = self.plain_modulus
        if self.scale_bits != 0:
            p.append("bfv parameters must have scale_bits 0")
        if not (is_prime(t) and (t - 1) % (2 * n) == 0):
            p.append(f"plain_modulus {t} is not a batching prime (prime, 1 mod 2N)")
            return p
        allowed = max_plain_bits(self.data_bits, self.max_clients)
        if t.bit_length() > allowed:
            p.append(
                f"plain_modulus has {t.bit_length()} bits, above the {allowed} the noise rule "
                f"allows for {self.data_bits}-bit q and {self.max_clients} summands"
            )
        s = quant_scale_for(t, self.max_clients, self.max_weight, self.value_range)
        if self.quant_scale != float(s):
            p.append(f"quant_scale {self.quant_scale} does not match the derived scale {s}")
        elif s < MIN_QUANT_SCALE:
            p.append(f"quant_scale {s} is below the minimum {MIN_QUANT_SCALE}")
        return p

    # ------------------------------------------------------------------ derived values
    @property
    def data_bits(self) -> int:
        """Bits of the modulus that carries data (all primes but SEAL's special one)."""
        bits = self.coeff_modulus_bits
        return bits[0] if len(bits) == 1 else sum(bits[:-1])

    @property
    def data_primes(self) -> int:
        """Number of primes in a data-level ciphertext."""
        return max(1, len(self.coeff_modulus_bits) - 1)

    @property
    def slots_per_ciphertext(self) -> int:
        return self.poly_modulus_degree if self.scheme == "bfv" else self.poly_modulus_degree // 2

    @property
    def num_slots(self) -> int:
        """Encoded vector length: the values, then the weight slot, then the count slot."""
        return self.num_values + 2

    @property
    def num_ciphertexts(self) -> int:
        return -(-self.num_slots // self.slots_per_ciphertext)

    def chunk_lengths(self) -> list[int]:
        """Slots used in each ciphertext (CKKS vectors carry exactly these lengths)."""
        per, total = self.slots_per_ciphertext, self.num_slots
        return [min(per, total - i) for i in range(0, total, per)]

    def max_entry_bytes(self, kind: int) -> int:
        """Largest valid serialized ciphertext for an update (kind 1) or aggregate (kind 2)."""
        poly = self.poly_modulus_degree * self.data_primes * 8
        if self.scheme == "bfv" and kind == KIND_UPDATE:
            # Seeded symmetric ciphertexts store one polynomial and a seed.
            return _zstd_bound(poly + 512)
        return _zstd_bound(2 * poly + 1024)

    def max_blob_bytes_for(self, kind: int) -> int:
        per = 4 + self.max_entry_bytes(kind)
        return WIRE_HEADER_BYTES + self.num_ciphertexts * per + WIRE_DIGEST_BYTES

    @property
    def max_blob_bytes(self) -> int:
        """Upper bound on the size of a valid client update blob."""
        return self.max_blob_bytes_for(KIND_UPDATE)

    def error_bound(self, total_weight: int, count: int | None = None) -> float:
        """Largest absolute error per coordinate of the decrypted weighted mean.

        Parameters
        ----------
        total_weight : int
            Sum of the (capped) weights of the summed updates.
        count : int, optional
            Number of summed updates; ``max_clients`` when not given.

        Notes
        -----
        BFV: each summand's stochastic rounding moves s*w*x by less than one unit (plus float64
        rounding below 1/16 unit), so the sum is off by < 1.1*count/s and the mean by that over
        ``total_weight``. The bound excludes clipping, which is counted separately.

        CKKS: empirical. Measured worst per-summand slot error was about 1300 * 2**-scale_bits
        (N = 4096...16384, scale 2**20...2**50, values up to 4000); the bound allows 2**13 * 2**-scale_bits
        per summand (grown with N above 8192) plus float64 rounding relative to M*R.
        """
        if total_weight <= 0:
            return math.inf
        k = self.max_clients if count is None else count
        if self.scheme == "bfv":
            return 1.1 * k / (self.quant_scale * total_weight) + 1e-12 * self.value_range
        per = 2.0 ** (13 - self.scale_bits) * max(1.0, self.poly_modulus_degree / 8192)
        per += self.max_weight * self.value_range * 2.0**-40
        return k * per / total_weight

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["coeff_modulus_bits"] = list(self.coeff_modulus_bits)
        d["format"] = FORMAT
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint_bytes(self) -> bytes:
        """SHA-256 of the canonical JSON; identifies the parameters on the wire."""
        return sha256(self.to_json().encode()).digest()

    def fingerprint(self) -> str:
        return self.fingerprint_bytes().hex()

    @classmethod
    def from_dict(cls, d: Any) -> HEParams:
        """Build from untrusted data; every field is checked. Raises :class:`WireError`."""
        return build_checked(cls, d, FORMAT, "HE parameters", "coeff_modulus_bits")

    @classmethod
    def from_json(cls, text: str | bytes) -> HEParams:
        return cls.from_dict(load_json_object(text, "HE parameters"))


def load_json_object(text: str | bytes, what: str) -> Any:
    """Parse untrusted JSON; a parse error is a :class:`WireError` naming ``what``."""
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise WireError(f"{what}: not JSON ({e})") from None


def build_checked(cls: Any, d: Any, fmt: str, what: str, list_field: str) -> Any:
    """Build the frozen parameter dataclass ``cls`` from untrusted ``d``: exactly its fields
    plus ``format`` (= ``fmt``), ``list_field`` a JSON list (made a tuple), integral
    ``value_range``/``quant_scale`` accepted as floats; the dataclass' own checks run, and any
    failure is a :class:`WireError` naming ``what``."""
    if not isinstance(d, dict):
        raise WireError(f"{what} must be a JSON object")
    names = {f.name for f in fields(cls)}
    if set(d) != names | {"format"}:
        missing, extra = sorted(names - set(d)), sorted(set(d) - names - {"format"})
        raise WireError(f"{what}: missing fields {missing}, unknown fields {extra}")
    if d["format"] != fmt:
        raise WireError(f"{what}: unsupported format {d['format']!r}")
    kw = {k: d[k] for k in names}
    if not isinstance(kw[list_field], list):
        raise WireError(f"{what}: {list_field} must be a list")
    kw[list_field] = tuple(kw[list_field])
    for name in ("value_range", "quant_scale"):
        v = kw[name]
        if isinstance(v, int) and not isinstance(v, bool):
            kw[name] = float(v)
    try:
        return cls(**kw)
    except CryptoError as e:
        raise WireError(str(e)) from None


def _ckks_value_bits(p: HEParams) -> int:
    """Bits of the largest possible CKKS sum slot: K*M*R (values) or K*M + K (weight, count)."""
    biggest = p.max_clients * p.max_weight * max(p.value_range, 1.0) + p.max_clients
    return max(1, math.ceil(math.log2(biggest)))
