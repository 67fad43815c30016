"""Exact R_q arithmetic (fedpriv.crypto.rq) against schoolbook multiplication and against SEAL."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedpriv.crypto.rq import (
    RnsContext,
    find_ntt_primes,
    minimal_primitive_root,
    pack_bits,
    uniform_mod,
    unpack_bits,
)


def _naive_negacyclic(a: list[int], b: list[int], p: int) -> list[int]:
    n = len(a)
    out = [0] * n
    for i in range(n):
        for k in range(n):
            if i + k < n:
                out[i + k] += a[i] * b[k]
            else:
                out[i + k - n] -= a[i] * b[k]
    return [x % p for x in out]


def _random_poly(
    ctx: RnsContext, rng: np.random.Generator, lead: tuple[int, ...] = ()
) -> np.ndarray:
    return np.stack(
        [rng.integers(0, p, (*lead, ctx.n), dtype=np.uint64) for p in ctx.primes], axis=-2
    )


@pytest.mark.parametrize("n", [8, 16, 64])
@pytest.mark.parametrize("bits", [20, 30, 32])
def test_product_matches_schoolbook(n: int, bits: int) -> None:
    ctx = RnsContext(n, find_ntt_primes(n, bits, 2))
    rng = np.random.default_rng(n * bits)
    for _ in range(3):
        a, b = _random_poly(ctx, rng), _random_poly(ctx, rng)
        got = ctx.mul(a, b)
        for j, p in enumerate(ctx.primes):
            want = _naive_negacyclic(a[j].tolist(), b[j].tolist(), p)
            assert got[j].tolist() == want


def test_ntt_is_invertible_linear_and_batched() -> None:
    n = 1024
    ctx = RnsContext(n, find_ntt_primes(n, 31, 3))
    rng = np.random.default_rng(1)
    a = _random_poly(ctx, rng, (2, 3))
    b = _random_poly(ctx, rng, (2, 3))
    fa = ctx.ntt(a)
    assert fa.shape == a.shape and np.array_equal(ctx.intt(fa), a)
    assert np.array_equal(ctx.ntt(ctx.add(a, b)), ctx.add(fa, ctx.ntt(b)))
    # A batch is the same as its members one by one.
    assert np.array_equal(fa[1, 2], ctx.ntt(a[1, 2]))
    assert np.all(fa < ctx.moduli[:, None])
    # X^n = -1: multiplying by X shifts with a sign flip.
    x = np.zeros((ctx.size, n), dtype=np.uint64)
    x[:, 1] = 1
    shifted = ctx.mul(a[0, 0], x)
    assert np.array_equal(shifted[:, 1:], a[0, 0][:, :-1])
    assert np.array_equal(shifted[:, 0], (ctx.moduli - a[0, 0][:, -1]) % ctx.moduli)


def test_primes_and_roots_match_seal() -> None:
    for n, bits, count in ((4096, 31, 3), (8192, 26, 4), (2048, 30, 1)):
        ours = find_ntt_primes(n, bits, count)
        theirs = [m.value() for m in seal.CoeffModulus.Create(n, [bits] * count)]
        assert sorted(ours) == sorted(theirs)
    assert find_ntt_primes(8192, 20, 1)[0] == seal.PlainModulus.Batching(8192, 20).value()
    p = find_ntt_primes(16, 20, 1)[0]
    root = minimal_primitive_root(32, p)
    assert pow(root, 16, p) == p - 1
    assert all(pow(r, 16, p) != p - 1 for r in range(2, root))


def _seal_bfv(n: int, bits: list[int], t_bits: int) -> tuple[object, list[int]]:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    cm = seal.CoeffModulus.Create(n, bits)
    parms.set_coeff_modulus(cm)
    parms.set_plain_modulus(seal.PlainModulus.Batching(n, t_bits))
    return seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128), [m.value() for m in cm]


def test_ntt_equals_seal_ntt_form_of_a_secret_key() -> None:
    n = 4096
    ctx_seal, primes = _seal_bfv(n, [31, 31, 31, 16], 20)
    kg = seal.KeyGenerator(ctx_seal)
    sk_obj = kg.secret_key()  # keep it alive: SEAL zeroes a secret key when it is destroyed
    sk = sk_obj.data()
    data = primes[:3]
    seal_ntt = np.array([sk.data(i) for i in range(3 * n)], dtype=np.uint64).reshape(3, n)
    ctx = RnsContext(n, data)
    s = ctx.intt(seal_ntt)
    centred = ctx.to_centered_ints(s)
    assert set(centred) <= {-1, 0, 1} and sum(map(abs, centred)) > n // 2
    assert np.array_equal(ctx.ntt(ctx.from_signed(np.array(centred))), seal_ntt)


def test_numpy_decryption_of_a_seal_ciphertext_matches_seal() -> None:
    """c0 + c1*s computed here, scaled by t/q, equals SEAL's own decryption."""
    from fedpriv.crypto._scratch import save_to_bytes
    from fedpriv.crypto.threshold import _seal_polys

    n = 4096
    ctx_seal, primes = _seal_bfv(n, [31, 31, 31, 16], 20)
    t = seal.PlainModulus.Batching(n, 20).value()
    kg = seal.KeyGenerator(ctx_seal)
    sk = kg.secret_key()
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    enc = seal.Encryptor(ctx_seal, pk)
    encoder = seal.BatchEncoder(ctx_seal)
    values = np.random.default_rng(2).integers(-(t // 2), t // 2, n)
    pt = seal.Plaintext()
    encoder.encode(values.tolist(), pt)
    ct = seal.Ciphertext()
    enc.encrypt(pt, ct)
    polys = _seal_polys(save_to_bytes(ct), n, 3, ntt=False)
    ctx = RnsContext(n, primes[:3])
    s_ntt = np.array([sk.data().data(i) for i in range(3 * n)], dtype=np.uint64).reshape(3, n)
    x = ctx.add(polys[0], ctx.intt(ctx.mul_pointwise(ctx.ntt(polys[1]), s_ntt)))
    q = ctx.modulus
    ours = [((v % q) * t * 2 + q) // (2 * q) % t for v in ctx.to_centered_ints(x)]
    theirs = seal.Plaintext()
    seal.Decryptor(ctx_seal, sk).decrypt(ct, theirs)
    assert ours == [theirs.data(i) for i in range(n)]


def test_scale_round_pow2_matches_exact_rounding() -> None:
    n = 256
    ctx = RnsContext(n, find_ntt_primes(n, 31, 3))
    a = _random_poly(ctx, np.random.default_rng(3))
    q = ctx.modulus
    for bits in (1, 17, 26, 33, 40):
        got = ctx.scale_round_pow2(a, bits)
        exact = [(2 * (v % q) * 2**bits + q) // (2 * q) % 2**bits for v in ctx.to_centered_ints(a)]
        # Within one unit (float64 fractional sum; exact except at near-ties).
        diff = (got.astype(object) - np.array(exact, dtype=object)) % 2**bits
        assert all(d in (0, 1, 2**bits - 1) for d in diff)
        assert sum(d != 0 for d in diff) <= 2


@pytest.mark.parametrize("bits", [1, 7, 8, 13, 26, 31, 33, 40, 64])
def test_pack_bits_round_trip_and_reference(bits: int) -> None:
    rng = np.random.default_rng(bits)
    hi = 2**bits if bits < 64 else 2**63
    for n in (1, 7, 8, 9, 1000):
        v = rng.integers(0, hi, n, dtype=np.uint64)
        packed = pack_bits(v, bits)
        reference = sum(int(x) << (i * bits) for i, x in enumerate(v)).to_bytes(
            (n * bits + 7) // 8, "little"
        )
        assert packed == reference
        assert np.array_equal(unpack_bits(packed, bits, n), v)


def test_unpack_bits_refuses_bad_lengths_and_padding() -> None:
    v = np.arange(5, dtype=np.uint64)
    packed = pack_bits(v, 5)  # 25 bits -> 4 bytes, 7 padding bits
    with pytest.raises(ValueError, match="expected 4"):
        unpack_bits(packed + b"\x00", 5, 5)
    with pytest.raises(ValueError, match="expected 4"):
        unpack_bits(packed[:-1], 5, 5)
    with pytest.raises(ValueError, match="padding"):
        unpack_bits(packed[:-1] + bytes([packed[-1] | 0x80]), 5, 5)


def test_uniform_mod_is_in_range_and_roughly_uniform() -> None:
    p = 97
    x = uniform_mod(p, (50_000,))
    assert x.dtype == np.uint64 and x.max() < p
    counts = np.bincount(x.astype(np.int64), minlength=p)
    expected = x.size / p
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 200  # 96 degrees of freedom: mean 96, sd ~14
