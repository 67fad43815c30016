"""HE parameter choice, (de)serialization and the BFV noise rule checked against SEAL."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedpriv.crypto import HEParams, choose_params
from fedpriv.crypto.bfv import BfvSecret
from fedpriv.crypto.choose import bfv_degree_order
from fedpriv.crypto.params import (
    BFV_PADDING_SAVING,
    FRESH_NOISE_BITS,
    MIN_QUANT_SCALE,
    max_plain_bits,
    quant_scale_for,
)
from fedpriv.errors import ConfigError, CryptoError, WireError


def test_bfv_defaults_pick_smallest_q() -> None:
    p = choose_params("bfv", 1000, max_clients=10, max_weight=100, value_range=4.0)
    # 1,002 slots fit one N=2048 ciphertext: half the padding of N=4096.
    assert p.scheme == "bfv" and p.poly_modulus_degree == 2048
    assert p.coeff_modulus_bits == (32,)
    assert p.plain_modulus.bit_length() == max_plain_bits(32, 10)
    assert p.quant_scale == quant_scale_for(p.plain_modulus, 10, 100, 4.0) >= MIN_QUANT_SCALE
    # The sum of K summands at the extremes stays below t/2.
    assert 10 * (100 * 4.0 * p.quant_scale + 1) < p.plain_modulus // 2
    assert p.num_ciphertexts == 1 and p.scale_bits == 0


@pytest.mark.parametrize(
    ("num_values", "degree"),
    [(6090, 2048), (9000, 2048), (4000, 4096), (100_000, 4096), (1_000_000, 4096)],
)
def test_bfv_ring_degree_minimises_padding(num_values: int, degree: int) -> None:
    p = choose_params("bfv", num_values, max_clients=10, max_weight=256, value_range=4.0)
    assert p.poly_modulus_degree == degree
    padded = p.num_ciphertexts * p.slots_per_ciphertext
    other = 4096 if degree == 2048 else 2048  # the other automatic degree
    alt = -(-p.num_slots // other) * other
    assert padded <= alt / (1 - BFV_PADDING_SAVING)
    assert bfv_degree_order(num_values)[0] == degree


def test_bfv_small_ring_falls_back_when_the_modulus_does_not_fit() -> None:
    # N=2048 holds at most 54 modulus bits at 128-bit security: a 56-bit q needs N=4096.
    p = choose_params("bfv", 1000, max_clients=10, max_weight=2**33, value_range=4.0)
    assert p.data_bits > 54 and p.poly_modulus_degree == 4096
    q = choose_params("bfv", 1000, 10, 100, 4.0, poly_modulus_degree=4096)
    assert q.poly_modulus_degree == 4096  # an explicit degree is kept


def test_bfv_params_scale_with_max_clients() -> None:
    prev_q, prev_s = 0, math.inf
    for k in (1, 10, 100, 1000, 10000):
        p = choose_params("bfv", 10, max_clients=k, max_weight=1000, value_range=4.0)
        q = p.data_bits
        assert q >= prev_q
        if q == prev_q:
            assert p.quant_scale <= prev_s
        prev_q, prev_s = q, p.quant_scale
    assert prev_q > 32  # 10k clients x 1000 examples cannot fit a 32-bit modulus


def test_bfv_explicit_bits_and_overflow_message() -> None:
    p = choose_params("bfv", 10, 10, 100, 4.0, coeff_modulus_bits=(60,))
    assert p.coeff_modulus_bits == (60,)
    with pytest.raises(ConfigError) as e:
        choose_params(
            "bfv", 10, max_clients=1000, max_weight=10**6, value_range=4.0, coeff_modulus_bits=(32,)
        )
    msg = str(e.value)
    assert "max_clients x max_weight x value_range" in msg
    assert "max_examples_per_client" in msg and "fewer clients" in msg
    with pytest.raises(ConfigError, match="needs a"):
        choose_params("bfv", 10, max_clients=2**20, max_weight=2**30, value_range=100.0)


def test_min_quant_scale_buys_precision_with_a_larger_modulus() -> None:
    base = choose_params("bfv", 10, 10, 100, 4.0)
    precise = choose_params("bfv", 10, 10, 100, 4.0, min_quant_scale=10**6)
    assert precise.data_bits > base.data_bits and precise.quant_scale >= 10**6
    assert precise.error_bound(100) < base.error_bound(100) / 1000


def test_choose_params_rejects_bad_inputs() -> None:
    with pytest.raises(ConfigError) as e:
        choose_params("rsa", 0, 0, 0, -1.0)
    assert len(e.value.errors) == 5
    with pytest.raises(ConfigError, match=r"security|compliant"):
        choose_params("bfv", 10, 10, 10, 1.0, poly_modulus_degree=2048, coeff_modulus_bits=(60,))


def test_ckks_defaults_and_overflow() -> None:
    p = choose_params("ckks", 5000, 10, 1000, 4.0)
    assert (p.poly_modulus_degree, p.coeff_modulus_bits, p.scale_bits) == (
        8192,
        (60, 40, 40, 60),
        40,
    )
    assert p.plain_modulus == 0 and p.quant_scale == 0.0
    assert p.num_ciphertexts == 2  # 4096 slots per CKKS ciphertext
    assert p.chunk_lengths() == [4096, 5002 - 4096]
    with pytest.raises(ConfigError, match="max_clients x max_weight"):
        choose_params(
            "ckks", 10, 1000, 10**9, 100.0, coeff_modulus_bits=(40, 21, 40), scale_bits=30
        )


def test_params_dict_roundtrip_and_fingerprint() -> None:
    p = choose_params("bfv", 123, 7, 50, 2.5)
    d = p.to_dict()
    assert HEParams.from_dict(d) == p
    assert HEParams.from_json(p.to_json()).fingerprint() == p.fingerprint()
    assert len(p.fingerprint()) == 64 and len(p.fingerprint_bytes()) == 32
    other = choose_params("bfv", 123, 7, 51, 2.5)
    assert other.fingerprint() != p.fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("scheme", "rsa"),
        ("poly_modulus_degree", 3000),
        ("coeff_modulus_bits", [70]),
        ("coeff_modulus_bits", "32"),
        ("plain_modulus", 65537 * 2),
        ("plain_modulus", 12289),  # prime but not 1 mod 2N for N=4096 (12288 = 3 * 4096)
        ("quant_scale", 1e9),
        ("num_values", 0),
        ("num_values", True),
        ("max_clients", -1),
        ("value_range", float("nan")),
        ("value_range", "4"),
        ("format", "other/1"),
    ],
)
def test_from_dict_rejects_each_bad_field(field: str, value: object) -> None:
    d = choose_params("bfv", 10, 3, 10, 1.0).to_dict()
    d[field] = value
    with pytest.raises(WireError):
        HEParams.from_dict(d)


def test_from_dict_rejects_shape_problems() -> None:
    d = choose_params("bfv", 10, 3, 10, 1.0).to_dict()
    with pytest.raises(WireError, match="unknown"):
        HEParams.from_dict({**d, "extra": 1})
    del d["max_weight"]
    with pytest.raises(WireError, match="missing"):
        HEParams.from_dict(d)
    with pytest.raises(WireError):
        HEParams.from_dict([1, 2])
    with pytest.raises(WireError, match="not JSON"):
        HEParams.from_json("{")


def test_direct_construction_enforces_noise_rule() -> None:
    p = choose_params("bfv", 10, 3, 10, 1.0)
    d = p.to_dict()
    del d["format"]
    d["coeff_modulus_bits"] = tuple(d["coeff_modulus_bits"])
    d["max_clients"] = 100  # same t, now too large for 100 summands under the noise rule
    with pytest.raises(CryptoError, match=r"noise rule|quant_scale"):
        HEParams(**d)


def test_error_bound_shapes() -> None:
    p = choose_params("bfv", 10, 10, 100, 4.0)
    assert p.error_bound(0) == math.inf
    assert p.error_bound(1000, 10) < p.error_bound(100, 10)
    assert p.error_bound(1000, 1) < p.error_bound(1000)
    c = choose_params("ckks", 10, 10, 100, 4.0)
    assert 0 < c.error_bound(1000) < 1e-6


# --------------------------------------------------------------------------- noise rule vs SEAL


@pytest.mark.parametrize("degree", [2048, 4096])
@pytest.mark.parametrize("q_bits", [32, 40])
@pytest.mark.parametrize("k", [1, 10, 100])
def test_noise_rule_matches_measured_budget(degree: int, q_bits: int, k: int) -> None:
    """Summing K fresh ciphertexts with the largest t the rule allows leaves budget and is exact."""
    p = choose_params(
        "bfv",
        degree - 2,
        max_clients=k,
        max_weight=1,
        value_range=1.0,
        poly_modulus_degree=degree,
        coeff_modulus_bits=(q_bits,),
    )
    t = p.plain_modulus
    assert t.bit_length() == max_plain_bits(q_bits, k)
    sec = BfvSecret(p)
    pub = sec.public
    rng = np.random.default_rng(k)
    n = p.poly_modulus_degree
    acc, expected = None, np.zeros(n, dtype=np.int64)
    for _ in range(k):
        # Full-range plaintexts: the plaintext term of BFV noise is largest here.
        v = rng.integers(-(t // 2), t // 2, n, dtype=np.int64)
        expected = (expected + v) % t
        (blob,) = sec.encrypt(v)
        ct = pub.load(blob, 1, 0)
        if acc is None:
            acc = ct
            fresh = sec.noise_budget(ct)
            # Measured: a fresh seeded ciphertext keeps q - t - 5 bits, for every N tried.
            assert fresh >= q_bits - t.bit_length() - FRESH_NOISE_BITS
        else:
            pub.add_inplace(acc, ct)
    budget = sec.noise_budget(acc)
    assert budget > 0, f"noise budget exhausted after {k} additions"
    assert budget >= 2  # the rule's margin
    got = sec.decrypt([acc]) % t
    np.testing.assert_array_equal(got, expected)
