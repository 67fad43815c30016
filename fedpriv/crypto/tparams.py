"""Public parameters of threshold-custody BFV and the derivation that sizes them.

Everything here is public. docs/crypto.md states the derivation with its references; this
module is its executable form, used both to choose parameters and to re-check any parameter
record that arrives from elsewhere (a record whose numbers do not satisfy the derivation is
refused, so a tampered file cannot lower the flooding width or the modulus).

Notation: N ring degree, q = q_1...q_L (data primes), p the SEAL special prime, t the plaintext
modulus, K = max_clients summands, T = threshold (partial decryptions combined), lambda the
statistical security, D the decryptions one dealt key may serve, b the compression bits,
W = 2^flood_bits the flooding width.

* Ciphertext noise to hide (per coefficient of an aggregate of K fresh SEAL public-key
  encryptions; SEAL encrypts at modulus q*p and divides by p, leaving r0 + r1*s plus terms
  below 21(2N+1)/p, where r0, r1 are rounding errors in [-1/2, 1/2] independent of s)::

      B_v = K (3/2 + 21 (2N+1) / p) + z_v K sqrt(N) / 2,   z_v = sqrt(2 ln(2 C 2^(lambda+8)))

  with C = D * (ciphertexts per decryption) * N the coefficients a key ever decrypts.
* Flooding: each party adds floor(U_1 + U_2 + U_3) (U_i uniform on [0, W), i.e. three uniform
  integers plus a {0,1,2} carry) minus its centre. Its Fisher information is 4.562 / W^2, so a
  shift by |x| <= B_v changes the Hellinger distance by at most x^2 I / 8 per coefficient and the
  whole lifetime view moves by at most B_v sqrt(4.562 C) / (2W) in statistical distance::

      W >= 2^lambda B_v sqrt(4.562 C) / (2 (1 - 2^-8))

  so that, with the 2^-(lambda+8) chance that the noise exceeds B_v, the distance is <= 2^-lambda.

* Correctness: with E the sum of T flooding terms (bounded deterministically by T(3W/2 + 2) or,
  sub-Gaussian, by z_e sqrt(T (3W^2/4 + 1)) with z_e = sqrt(2 ln(2 C 2^failure_bits))),
  decryption is exact when (B_v + E + T) < (3/4) q/(2t), and the b-bit compression of c0 and of
  the partial decryptions adds at most (K + T)(1/2 + 2^-10) units of q/2^b, which
  ``2^b >= 4 t (K + T)(1 + 2^-9)`` keeps below the remaining quarter.
* Security of the ring: log2(q p) <= the HE-standard bound for N at 128 bits (uniform ternary
  secret, error sigma 3.2), the table SEAL enforces (``CoeffModulus.MaxBitCount``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from hashlib import sha256
from typing import Any

from fedpriv.crypto.params import (
    MIN_QUANT_SCALE,
    build_checked,
    load_json_object,
    quant_scale_for,
)
from fedpriv.crypto.rq import find_ntt_primes, is_prime
from fedpriv.errors import ConfigError, CryptoError

__all__ = [
    "HE_STANDARD_MAX_BITS",
    "THRESHOLD_FORMAT",
    "NoiseBudget",
    "ThresholdParams",
    "choose_threshold_params",
]

THRESHOLD_FORMAT = "fedpriv.crypto.ThresholdParams/1"
# HE standard (Albrecht et al. 2018), 128-bit classical security, uniform ternary secret:
# the largest log2 of the key-level modulus (data primes and special prime). Same as SEAL's
# CoeffModulus.MaxBitCount(N, tc128); tests/unit/test_threshold.py compares the two.
HE_STANDARD_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
DEGREES = (2048, 4096, 8192, 16384, 32768)
# SEAL's error distribution (centred binomial, sigma 3.2; clipped normal when built so) never
# exceeds 21 in absolute value: bounds the key-level noise 21 (2N + 1).
SEAL_NOISE_MAX = 21
BOUND_SLACK_BITS = 8
IH3_FISHER = 4.562  # W^2 times the Fisher information of the sum of three uniforms on [0, W)
COMPRESS_SLACK = 2.0**-10  # float64 error of rq.RnsContext.scale_round_pow2, in units
DEFAULT_LAMBDA = 40
DEFAULT_MAX_DECRYPTIONS = 2**16
DEFAULT_FAILURE_BITS = 40
DEFAULT_MIN_QUANT_SCALE = 32
MAX_DATA_PRIME_BITS = 32
MAX_PLAIN_BITS_THRESHOLD = 31
MAX_PARTIES = 65535


@dataclass(frozen=True)
class NoiseBudget:
    """Every number of the derivation for one parameter set (all public)."""

    coefficients: float
    """C: coefficients decrypted over the key's lifetime."""
    noise_bound: float
    """B_v: bound on the aggregate's noise that flooding hides."""
    flood_bits_needed: int
    statistical_distance_log2: float
    """log2 of the bound on the statistical distance of the whole lifetime view."""
    flood_sum_bound: float
    """E: bound on the sum of T flooding terms."""
    q_log2: float
    q_log2_needed: float
    compress_bits_needed: int
    failure_log2: float
    """log2 of the probability that any decryption over the key's lifetime fails."""
    security_bits_used: int
    security_bits_allowed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _noise_and_flooding(
    n: int,
    ciphertexts: int,
    max_clients: int,
    threshold: int,
    special_prime: int,
    lam: int,
    max_decryptions: int,
    failure_bits: int,
    flood_bits: int | None,
) -> tuple[float, float, int, float, float, float]:
    """(C, B_v, flood bits needed, log2 SD at the given width, E bound, failure log2)."""
    c = float(max_decryptions) * ciphertexts * n
    k = max_clients
    # The distance budget 2^-lambda: 2^-(lambda + BOUND_SLACK_BITS) for the chance that the
    # noise exceeds B_v, the rest for the flooding.
    miss = lam + BOUND_SLACK_BITS
    z_v = math.sqrt(2 * (math.log(2 * c) + miss * math.log(2)))
    b_v = k * (1.5 + SEAL_NOISE_MAX * (2 * n + 1) / special_prime) + z_v * k * math.sqrt(n) / 2
    flood_share = 1 - 2.0**-BOUND_SLACK_BITS
    need_w = lam + math.log2(b_v * math.sqrt(IH3_FISHER * c) / (2 * flood_share))
    need = math.ceil(need_w)
    fb = need if flood_bits is None else flood_bits
    w = 2.0**fb
    sd_log2 = math.log2(b_v * math.sqrt(IH3_FISHER * c) / (2 * w) + 2.0**-miss)
    z_e = math.sqrt(2 * (math.log(2 * c) + failure_bits * math.log(2)))
    tt = threshold
    e = min(tt * (1.5 * w + 2), z_e * math.sqrt(tt * (0.75 * w * w + 1))) + tt
    fail = math.log2(2.0**-failure_bits + 2.0**-miss)
    return c, b_v, need, sd_log2, e, fail


def _compress_bits_needed(t: int, max_clients: int, threshold: int) -> int:
    return math.ceil(math.log2(4 * t * (max_clients + threshold) * (1 + 2 * COMPRESS_SLACK)))


def _q_log2_needed(t: int, b_v: float, e: float) -> float:
    return math.log2(8 / 3 * t * (b_v + e))


@dataclass(frozen=True)
class ThresholdParams:
    """Public parameters of one threshold-custody BFV setup (t of n parties decrypt).

    Attributes
    ----------
    poly_modulus_degree : int
        Ring degree N; N slots per ciphertext.
    primes : tuple of int
        Data primes q_1..q_L (each below 2^32, 1 mod 2N): ciphertexts live mod q = q_1...q_L.
    special_prime : int
        SEAL's key-level prime p (the public key lives mod q*p; encryption divides by p).
    plain_modulus : int
        t, a batching prime below 2^31.
    compress_bits : int
        b: c0 of every ciphertext and every partial decryption travel as round(2^b x/q) mod 2^b.
    flood_bits : int
        log2 of W, the width of each of the three uniforms summed into a flooding term.
    num_values, max_clients, max_weight, value_range, quant_scale
        As in :class:`~fedpriv.crypto.params.HEParams` (same encoding, same scale rule).
    parties : int
        n: share holders carry the indices 1..n.
    threshold : int
        T: partial decryptions needed (and combined) per decryption.
    statistical_security : int
        lambda: the lifetime view of anyone combining partial decryptions is within 2^-lambda
        of one computed from the aggregate alone.
    max_decryptions : int
        D: decryptions a dealt key may serve before it must be re-dealt.
    failure_bits : int
        Any decryption over the key's lifetime fails with probability below 2^-failure_bits
        (plus 2^-(lambda+8)); a failure is detected, never silent (sanity slots).
    """

    poly_modulus_degree: int
    primes: tuple[int, ...]
    special_prime: int
    plain_modulus: int
    compress_bits: int
    flood_bits: int
    num_values: int
    max_clients: int
    max_weight: int
    value_range: float
    quant_scale: float
    parties: int
    threshold: int
    statistical_security: int
    max_decryptions: int
    failure_bits: int

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise CryptoError("invalid threshold parameters: " + "; ".join(problems))

    # ------------------------------------------------------------------ validation
    def _problems(self) -> list[str]:
        def is_int(v: object) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        p: list[str] = []
        n = self.poly_modulus_degree
        if not is_int(n) or n not in HE_STANDARD_MAX_BITS:
            return [f"poly_modulus_degree must be one of {sorted(HE_STANDARD_MAX_BITS)}, got {n!r}"]
        ints = {
            "special_prime": (2, 2**60),
            "plain_modulus": (2, 2**MAX_PLAIN_BITS_THRESHOLD),
            "compress_bits": (1, 40),
            "flood_bits": (1, 400),
            "num_values": (1, 2**31 - 1),
            "max_clients": (1, 2**20),
            "max_weight": (1, 2**40),
            "parties": (1, MAX_PARTIES),
            "threshold": (1, MAX_PARTIES),
            "statistical_security": (20, 128),
            "max_decryptions": (1, 2**40),
            "failure_bits": (20, 128),
        }
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if not is_int(v) or not lo <= v <= hi:
                p.append(f"{name} must be an integer in {lo}..{hi}, got {v!r}")
        r = self.value_range
        if not isinstance(r, float) or not math.isfinite(r) or not 0 < r <= 2.0**20:
            p.append(f"value_range must be a float in (0, 2^20], got {r!r}")
        if not isinstance(self.quant_scale, float):
            p.append(f"quant_scale must be a float, got {self.quant_scale!r}")
        pr = self.primes
        if (
            not isinstance(pr, tuple)
            or not 1 <= len(pr) <= 8
            or not all(is_int(x) and 2 < x < 2**MAX_DATA_PRIME_BITS for x in pr)
        ):
            p.append(f"primes must be 1..8 integers below 2^{MAX_DATA_PRIME_BITS}, got {pr!r}")
        if p:
            return p
        if self.threshold > self.parties:
            p.append(f"threshold {self.threshold} exceeds the {self.parties} parties")
        every = (*pr, self.special_prime, self.plain_modulus)
        if len(set(every)) != len(every):
            p.append("primes, special prime and plain modulus must be distinct")
        for x in every:
            if (x - 1) % (2 * n) or not is_prime(x):
                p.append(f"{x} is not a prime that is 1 mod 2N = {2 * n}")
        if min(pr) <= self.parties:
            p.append("every data prime must exceed the largest party index")
        if p:
            return p
        s = quant_scale_for(self.plain_modulus, self.max_clients, self.max_weight, r)
        if self.quant_scale != float(s):
            p.append(f"quant_scale {self.quant_scale} does not match the derived scale {s}")
        elif s < MIN_QUANT_SCALE:
            p.append(f"quant_scale {s} is below the minimum {MIN_QUANT_SCALE}")
        if self.plain_modulus.bit_length() + self.compress_bits > 63:
            p.append("plain modulus bits + compress bits must not exceed 63")
        budget = self.noise_budget()
        if self.flood_bits < budget.flood_bits_needed:
            p.append(
                f"flood_bits {self.flood_bits} below the {budget.flood_bits_needed} that "
                f"{self.statistical_security}-bit statistical security needs"
            )
        if budget.q_log2 < budget.q_log2_needed:
            p.append(f"q has {budget.q_log2:.2f} bits, decryption needs {budget.q_log2_needed:.2f}")
        if self.compress_bits < budget.compress_bits_needed:
            p.append(f"compress_bits must be at least {budget.compress_bits_needed}")
        if budget.security_bits_used > budget.security_bits_allowed:
            p.append(
                f"log2(q p) = {budget.security_bits_used} exceeds the {budget.security_bits_allowed}"
                f" bits the HE standard allows for N = {n} at 128-bit security"
            )
        return p

    # ------------------------------------------------------------------ derived values
    @property
    def scheme(self) -> str:
        return "bfv"

    @property
    def custody(self) -> str:
        return "threshold"

    @property
    def modulus(self) -> int:
        q = 1
        for x in self.primes:
            q *= x
        return q

    @property
    def prime_bits(self) -> tuple[int, ...]:
        return tuple(x.bit_length() for x in self.primes)

    @property
    def num_slots(self) -> int:
        return self.num_values + 2

    @property
    def num_ciphertexts(self) -> int:
        return -(-self.num_slots // self.poly_modulus_degree)

    @property
    def num_coefficients(self) -> int:
        """Coefficients per polynomial of a whole update (ciphertexts x N)."""
        return self.num_ciphertexts * self.poly_modulus_degree

    def noise_budget(self) -> NoiseBudget:
        n, cts = self.poly_modulus_degree, self.num_ciphertexts
        c, b_v, need, sd, e, fail = _noise_and_flooding(
            n,
            cts,
            self.max_clients,
            self.threshold,
            self.special_prime,
            self.statistical_security,
            self.max_decryptions,
            self.failure_bits,
            self.flood_bits,
        )
        q_log2 = math.log2(self.modulus)
        return NoiseBudget(
            coefficients=c,
            noise_bound=b_v,
            flood_bits_needed=need,
            statistical_distance_log2=sd,
            flood_sum_bound=e,
            q_log2=q_log2,
            q_log2_needed=_q_log2_needed(self.plain_modulus, b_v, e),
            compress_bits_needed=_compress_bits_needed(
                self.plain_modulus, self.max_clients, self.threshold
            ),
            failure_log2=fail,
            security_bits_used=sum(self.prime_bits) + self.special_prime.bit_length(),
            security_bits_allowed=HE_STANDARD_MAX_BITS[n],
        )

    # Sizes on the wire (see fedpriv.crypto.threshold for the layouts).
    @property
    def ciphertext_payload_bytes(self) -> int:
        m = self.num_coefficients
        return (m * self.compress_bits + 7) // 8 + sum((m * b + 7) // 8 for b in self.prime_bits)

    @property
    def partial_payload_bytes(self) -> int:
        return (self.num_coefficients * self.compress_bits + 7) // 8

    @property
    def max_blob_bytes(self) -> int:
        """Size of a client update blob (exact: every update has this size)."""
        from fedpriv.crypto.threshold import update_blob_bytes

        return update_blob_bytes(self)

    def error_bound(self, total_weight: int, count: int | None = None) -> float:
        """Largest absolute error per coordinate of the decrypted weighted mean (as HEParams)."""
        if total_weight <= 0:
            return math.inf
        k = self.max_clients if count is None else count
        return 1.1 * k / (self.quant_scale * total_weight) + 1e-12 * self.value_range

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["primes"] = list(self.primes)
        d["format"] = THRESHOLD_FORMAT
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def fingerprint_bytes(self) -> bytes:
        return sha256(self.to_json().encode()).digest()

    def fingerprint(self) -> str:
        return self.fingerprint_bytes().hex()

    @classmethod
    def from_dict(cls, d: Any) -> ThresholdParams:
        """Build from untrusted data; every field and the derivation are checked."""
        return build_checked(cls, d, THRESHOLD_FORMAT, "threshold parameters", "primes")

    @classmethod
    def from_json(cls, text: str | bytes) -> ThresholdParams:
        return cls.from_dict(load_json_object(text, "threshold parameters"))


# --------------------------------------------------------------------------- the chooser
def _split_bits(total: int) -> list[int]:
    k = -(-total // MAX_DATA_PRIME_BITS)
    base, extra = divmod(total, k)
    return [base + 1] * extra + [base] * (k - extra)


def _data_primes(n: int, need_log2: float, exclude: list[int]) -> list[int] | None:
    """Fewest, then smallest, NTT primes below 2^32 whose product has >= need_log2 bits."""
    total = math.ceil(need_log2)
    for _ in range(8):
        sizes = _split_bits(total)
        try:
            primes: list[int] = []
            for b in sorted(set(sizes), reverse=True):
                primes += find_ntt_primes(n, b, sizes.count(b), exclude=exclude + primes)
        except ValueError:
            return None
        if sum(math.log2(x) for x in primes) >= need_log2:
            return primes
        total += 1
    return None


def choose_threshold_params(
    num_values: int,
    max_clients: int,
    max_weight: int,
    value_range: float,
    parties: int,
    threshold: int,
    statistical_security: int = DEFAULT_LAMBDA,
    max_decryptions: int = DEFAULT_MAX_DECRYPTIONS,
    failure_bits: int = DEFAULT_FAILURE_BITS,
    min_quant_scale: int = DEFAULT_MIN_QUANT_SCALE,
    poly_modulus_degree: int = 0,
) -> ThresholdParams:
    """Smallest-upload parameters meeting the stated security levels (see the module docstring).

    The plaintext modulus is the smallest batching prime giving a quantization scale of at
    least ``min_quant_scale`` (32 by default: a 10-client, weight-256 federation gets the
    precision of today's shared-key default). Among ring degrees whose modulus fits the HE
    standard, the one with the fewest upload bytes wins (ties: the smaller ring).

    Raises
    ------
    ConfigError
        Invalid inputs, or no ring degree can hold the modulus the security levels need.
    """
    errs: list[str] = []
    for name, v, lo in (
        ("num_values", num_values, 1),
        ("max_clients", max_clients, 1),
        ("max_weight", max_weight, 1),
        ("parties", parties, 1),
        ("threshold", threshold, 1),
        ("statistical_security", statistical_security, 20),
        ("max_decryptions", max_decryptions, 1),
        ("failure_bits", failure_bits, 20),
        ("min_quant_scale", min_quant_scale, MIN_QUANT_SCALE),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < lo:
            errs.append(f"{name}: must be an integer >= {lo}, got {v!r}")
    if not isinstance(value_range, (int, float)) or not 0 < value_range < math.inf:
        errs.append(f"value_range: must be > 0 and finite, got {value_range!r}")
    if not errs and threshold > parties:
        errs.append(f"threshold: {threshold} exceeds the number of parties {parties}")
    if not errs and parties > MAX_PARTIES:
        errs.append(f"parties: at most {MAX_PARTIES}")
    if errs:
        raise ConfigError(errs)
    r = float(value_range)
    span = max_clients * max_weight * r
    t_bits = math.ceil(math.log2(2 * (min_quant_scale * span + max_clients + 2)))
    if t_bits > MAX_PLAIN_BITS_THRESHOLD:
        raise ConfigError(
            f"encryption: max_clients x max_weight x value_range = {span:.4g} needs a {t_bits}-bit "
            f"plaintext modulus; threshold custody supports {MAX_PLAIN_BITS_THRESHOLD}. Lower "
            "encryption.max_examples_per_client or value_range, or use fewer clients per round"
        )
    degrees = (poly_modulus_degree,) if poly_modulus_degree else DEGREES
    best: tuple[int, ThresholdParams] | None = None
    tried: list[str] = []
    for n in degrees:
        if n not in HE_STANDARD_MAX_BITS:
            raise ConfigError(f"poly_modulus_degree: must be one of {sorted(HE_STANDARD_MAX_BITS)}")
        # The smallest batching prime giving the scale (a larger t only adds precision).
        t = 0
        for bits in range(max(t_bits, (2 * n).bit_length()), MAX_PLAIN_BITS_THRESHOLD + 1):
            try:
                t = find_ntt_primes(n, bits, 1)[0]
            except ValueError:
                continue
            if quant_scale_for(t, max_clients, max_weight, r) >= min_quant_scale:
                break
            t = 0
        if not t:
            tried.append(f"N={n}: no batching prime of {t_bits} to {MAX_PLAIN_BITS_THRESHOLD} bits")
            continue
        s = quant_scale_for(t, max_clients, max_weight, r)
        cts = -(-(num_values + 2) // n)
        b = _compress_bits_needed(t, max_clients, threshold)
        allowed = HE_STANDARD_MAX_BITS[n]
        found = None
        # A larger special prime only shrinks the 21(2N+1)/p term: take the largest that fits.
        for sp_bits in range(min(60, allowed - 20), max(17, math.ceil(math.log2(42 * n)) + 1), -1):
            sp = find_ntt_primes(n, sp_bits, 1, exclude=[t])[0]
            _, b_v, fb, _, e, _ = _noise_and_flooding(
                n,
                cts,
                max_clients,
                threshold,
                sp,
                statistical_security,
                max_decryptions,
                failure_bits,
                None,
            )
            need = _q_log2_needed(t, b_v, e)
            if math.ceil(need) + sp_bits > allowed:
                continue
            primes = _data_primes(n, need, [t, sp])
            if primes is None or sum(x.bit_length() for x in primes) + sp_bits > allowed:
                continue
            found = (sp, primes, fb)
            break
        if found is None:
            tried.append(f"N={n}: the modulus does not fit the {allowed}-bit security bound")
            continue
        sp, primes, fb = found
        try:
            params = ThresholdParams(
                n,
                tuple(primes),
                sp,
                t,
                b,
                fb,
                num_values,
                max_clients,
                max_weight,
                r,
                float(s),
                parties,
                threshold,
                statistical_security,
                max_decryptions,
                failure_bits,
            )
        except CryptoError as e:
            tried.append(f"N={n}: {e}")
            continue
        size = params.ciphertext_payload_bytes
        if best is None or size < best[0]:
            best = (size, params)
    if best is None:
        raise ConfigError(
            "encryption: no threshold parameters meet the security levels "
            f"({statistical_security}-bit statistical, 128-bit ring): {'; '.join(tried)}"
        )
    return best[1]
