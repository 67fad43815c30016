"""Choosing BFV/CKKS parameters: the smallest modulus and ring that hold a federation's sum.

Separate from :mod:`fedpriv.crypto.params` (the parameter record) because choosing asks SEAL
which parameter sets it accepts, and the SEAL backends import the parameter record.
"""

from __future__ import annotations

import math

from fedpriv.crypto.bfv import batching_prime, seal_params_error
from fedpriv.crypto.ckks import seal_params_error as ckks_params_error
from fedpriv.crypto.params import (
    BFV_AUTO_N,
    BFV_DEFAULT_N,
    BFV_PADDING_SAVING,
    BFV_Q_CANDIDATES,
    CKKS_DEFAULT_BITS,
    CKKS_DEFAULT_N,
    MIN_QUANT_SCALE,
    HEParams,
    max_plain_bits,
    quant_scale_for,
)
from fedpriv.errors import ConfigError, CryptoError

__all__ = ["bfv_degree_order", "choose_params"]


def bfv_degree_order(num_values: int) -> tuple[int, ...]:
    """Ring degrees to try, best first, when BFV's N is chosen automatically.

    The encoded vector (``num_values`` + 2 slots) is padded to whole ciphertexts of N slots, and
    the upload grows with the padded length. A 6,090-value model fills 2 x 4096 = 8,192 slots
    (1.34x padding) but only 3 x 2048 = 6,144 (1.01x) with N = 2048. The smaller ring comes first
    only when it saves at least ``BFV_PADDING_SAVING`` of the slots; it cannot hold as large a
    modulus, so N = 4096 always stays as the fallback.
    """
    slots = num_values + 2
    padded = {n: -(-slots // n) * n for n in BFV_AUTO_N}
    best = min(BFV_AUTO_N, key=lambda n: (padded[n], -n))
    if padded[best] <= padded[BFV_DEFAULT_N] * (1 - BFV_PADDING_SAVING):
        return (best, *(n for n in BFV_AUTO_N if n != best))
    return (BFV_DEFAULT_N, *(n for n in BFV_AUTO_N if n != BFV_DEFAULT_N))


def choose_params(
    scheme: str,
    num_values: int,
    max_clients: int,
    max_weight: int,
    value_range: float,
    poly_modulus_degree: int = 0,
    coeff_modulus_bits: tuple[int, ...] = (),
    scale_bits: int = 40,
    min_quant_scale: int = MIN_QUANT_SCALE,
) -> HEParams:
    """Choose parameters that sum ``max_clients`` updates without overflow or decryption failure.

    BFV: N from :func:`bfv_degree_order` unless given (4096, or 2048 where that cuts the padding
    of a small model by 5% or more and the modulus fits); the smallest q in ``BFV_Q_CANDIDATES``
    (or the given primes) whose noise rule leaves a plaintext modulus t large enough for a
    quantization scale >= 16. t is the largest batching prime the rule allows, which maximizes
    the scale (precision).

    CKKS: N = 8192 and primes (60, 40, 40, 60) unless given, scale 2**scale_bits.

    ``min_quant_scale`` (BFV) trades upload size for precision: the mean's error is at most
    about ``count / (s * total_weight)``, so raise it when weights are far below ``max_weight``.

    Raises
    ------
    ConfigError
        When the inputs are invalid or no parameter set can hold the sum; the message says
        which quantity overflowed and what to change.
    """
    errs: list[str] = []
    if scheme not in ("bfv", "ckks"):
        errs.append(f"encryption.scheme: must be 'bfv' or 'ckks', got {scheme!r}")
    for name, v in (("num_values", num_values), ("max_clients", max_clients)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            errs.append(f"{name}: must be an integer >= 1, got {v!r}")
    if not isinstance(max_weight, int) or isinstance(max_weight, bool) or max_weight < 1:
        errs.append(
            f"encryption.max_examples_per_client: the weight cap must be >= 1, got {max_weight!r}"
        )
    if not isinstance(value_range, (int, float)) or not 0 < value_range < math.inf:
        errs.append(f"encryption.value_range: must be > 0 and finite, got {value_range!r}")
    if not isinstance(min_quant_scale, int) or min_quant_scale < MIN_QUANT_SCALE:
        errs.append(f"min_quant_scale: must be an integer >= {MIN_QUANT_SCALE}")
    if errs:
        raise ConfigError(errs)
    r = float(value_range)
    bits_in = tuple(int(b) for b in coeff_modulus_bits)
    if scheme == "ckks":
        n = poly_modulus_degree or CKKS_DEFAULT_N
        bits = bits_in or CKKS_DEFAULT_BITS
        try:
            params = HEParams(
                "ckks", n, bits, 0, scale_bits, num_values, max_clients, max_weight, r, 0.0
            )
        except CryptoError as e:
            raise ConfigError(
                f"encryption: {e}; max_clients x max_weight x value_range = "
                f"{max_clients} x {max_weight} x {r:g} with scale 2^{scale_bits}. Lower "
                "encryption.max_examples_per_client or value_range, use fewer clients per "
                "round, lower encryption.ckks_scale_bits, or add coefficient-modulus bits"
            ) from None
        reason = ckks_params_error(params)
        if reason:
            raise ConfigError(
                f"encryption: CKKS N={n} primes {list(bits)} rejected by SEAL: {reason}"
            )
        return params

    degrees = (poly_modulus_degree,) if poly_modulus_degree else bfv_degree_order(num_values)
    candidates = [bits_in] if bits_in else [(q,) for q in BFV_Q_CANDIDATES]
    span = max_clients * max_weight * r
    need_t_bits = math.ceil(math.log2(2 * (min_quant_scale * span + max_clients + 2)))
    tried: list[str] = []
    # Smallest modulus first (it sets the bytes per value), then the preferred ring degree.
    for bits in candidates:
        q = bits[0] if len(bits) == 1 else sum(bits[:-1])
        tb = max_plain_bits(q, max_clients)
        if tb < need_t_bits:
            tried.append(f"q={q} bits allows t of {tb} bits")
            continue
        for n in degrees:
            try:
                t = batching_prime(n, tb)
            except ValueError as e:
                tried.append(f"N={n}, q={q}: {e}")
                continue
            reason = seal_params_error(n, bits, t)
            if reason:
                tried.append(f"N={n}, q={q} ({list(bits)}): {reason}")
                continue
            s = quant_scale_for(t, max_clients, max_weight, r)
            if s < min_quant_scale:
                tried.append(f"N={n}, q={q} gives quantization scale {s} < {min_quant_scale}")
                continue
            try:
                return HEParams(
                    "bfv", n, bits, t, 0, num_values, max_clients, max_weight, r, float(s)
                )
            except CryptoError as e:
                raise ConfigError(f"encryption: {e}") from None
    ring = " or ".join(f"N={n}" for n in degrees)
    raise ConfigError(
        f"encryption: max_clients x max_weight x value_range = {max_clients} x {max_weight} x "
        f"{r:g} = {span:.4g} needs a {need_t_bits}-bit BFV plaintext modulus (scale >= "
        f"{min_quant_scale}) but with {ring} the noise budget after {max_clients} additions allows "
        f"less ({'; '.join(tried)}). Lower encryption.max_examples_per_client or value_range, "
        "or use fewer clients per round (or set larger encryption.coeff_modulus_bits / "
        "poly_modulus_degree)"
    )
