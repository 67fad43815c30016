"""Threshold custody: exact combined decryption, any T of n, T-1 fail, shares, masks, parameters."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedpriv.crypto import threshold as th
from fedpriv.crypto.core import bfv_update_slots
from fedpriv.crypto.tparams import (
    HE_STANDARD_MAX_BITS,
    ThresholdParams,
    choose_threshold_params,
)
from fedpriv.errors import ConfigError, CryptoError, WireError
from fedpriv.privacy.rng import InsecureTestRandom

NV, K, M, R, N_PARTIES, T = 500, 4, 50, 2.0, 5, 3


@pytest.fixture(scope="module")
def params() -> ThresholdParams:
    return choose_threshold_params(NV, K, M, R, N_PARTIES, T)


@pytest.fixture(scope="module")
def dealt(params: ThresholdParams) -> th.DealtKeys:
    return th.deal(params)


@pytest.fixture(scope="module")
def encryptor(params: ThresholdParams, dealt: th.DealtKeys) -> th.ThresholdEncryptor:
    return th.ThresholdEncryptor(params, dealt.public_key)


def _updates(params: ThresholdParams, enc: th.ThresholdEncryptor, k: int, seed: int):
    """k encrypted updates and the exact integer sum of their slots."""
    rng = np.random.default_rng(seed)
    total = np.zeros(params.num_coefficients, dtype=np.int64)
    blobs = []
    for i in range(k):
        x = rng.uniform(-R, R, NV)
        w = int(rng.integers(1, M + 1))
        slots, _, _ = bfv_update_slots(
            params, params.num_coefficients, x, w, rng=InsecureTestRandom(i)
        )
        upd = enc.encrypt(x, w, rng=InsecureTestRandom(i))
        blobs.append(upd.blob)
        total += slots
    return blobs, total


def _aggregate(params: ThresholdParams, dealt: th.DealtKeys, blobs: list[bytes]) -> bytes:
    agg = th.ThresholdAggregator(params, dealt.key_id)
    for b in blobs:
        agg.add(b)
    return agg.result()


def _share(dealt: th.DealtKeys, index: int) -> th.KeyShare:
    return next(s for s in dealt.shares if s.index == index)


def _decrypt(params, dealt, aggregate, ps, masks=None):
    partials = [
        _share(dealt, i).partial_decrypt(aggregate, ps, None if masks is None else masks[i])
        for i in ps
    ]
    return th.threshold_decrypt(params, aggregate, partials, dealt.key_id, masks)


def test_combined_decryption_is_the_exact_integer_sum(params, dealt, encryptor) -> None:
    blobs, total = _updates(params, encryptor, K, seed=1)
    aggregate = _aggregate(params, dealt, blobs)
    out = _decrypt(params, dealt, aggregate, [1, 2, 3])
    ints = np.rint(out.weighted_sum * params.quant_scale).astype(np.int64)
    assert np.array_equal(ints, total[:NV])
    assert out.total_weight == total[NV] and out.count == K == total[NV + 1]


def test_any_threshold_subset_decrypts(params, dealt, encryptor) -> None:
    blobs, total = _updates(params, encryptor, 2, seed=2)
    aggregate = _aggregate(params, dealt, blobs)
    for ps in itertools.combinations(range(1, N_PARTIES + 1), T):
        out = _decrypt(params, dealt, aggregate, list(ps))
        assert np.array_equal(np.rint(out.weighted_sum * params.quant_scale), total[:NV])


def test_fewer_than_threshold_fail_cleanly(params, dealt, encryptor) -> None:
    blobs, _ = _updates(params, encryptor, 1, seed=3)
    aggregate = _aggregate(params, dealt, blobs)
    with pytest.raises(CryptoError, match="exactly 3 participants"):
        _share(dealt, 1).partial_decrypt(aggregate, [1, 2])
    partials = [_share(dealt, i).partial_decrypt(aggregate, [1, 2, 3]) for i in (1, 2)]
    with pytest.raises(CryptoError, match="threshold is 3"):
        th.combine_partials(params, aggregate, partials, dealt.key_id)
    # T-1 genuine partials plus one made up by the attacker decrypt to garbage, detected.
    fake = _share(dealt, 4).partial_decrypt(aggregate, [1, 2, 4])
    with pytest.raises(WireError, match="disagree"):
        th.combine_partials(params, aggregate, [*partials, fake], dealt.key_id)


def test_a_party_outside_the_set_or_a_repeat_is_refused(params, dealt, encryptor) -> None:
    blobs, _ = _updates(params, encryptor, 1, seed=4)
    aggregate = _aggregate(params, dealt, blobs)
    with pytest.raises(CryptoError, match="not among"):
        _share(dealt, 5).partial_decrypt(aggregate, [1, 2, 3])
    p1 = _share(dealt, 1).partial_decrypt(aggregate, [1, 2, 3])
    p2 = _share(dealt, 2).partial_decrypt(aggregate, [1, 2, 3])
    with pytest.raises(WireError, match="repeated"):
        th.combine_partials(params, aggregate, [p1, p2, p1], dealt.key_id)
    with pytest.raises(CryptoError, match="at least 2"):
        _share(dealt, 1).partial_decrypt(aggregate, [1, 2, 3], min_count=2)


def test_partials_are_bound_to_their_aggregate(params, dealt, encryptor) -> None:
    blobs, _ = _updates(params, encryptor, 2, seed=5)
    a1 = _aggregate(params, dealt, blobs[:1])
    a2 = _aggregate(params, dealt, blobs)
    partials = [_share(dealt, i).partial_decrypt(a1, [1, 2, 3]) for i in (1, 2, 3)]
    with pytest.raises(WireError, match="another aggregate"):
        th.combine_partials(params, a2, partials, dealt.key_id)
    combined = th.combine_partials(params, a1, partials, dealt.key_id)
    th.finish_decryption(params, combined, dealt.key_id, expected_aggregate=th.aggregate_digest(a1))
    with pytest.raises(WireError, match="another aggregate"):
        th.finish_decryption(
            params, combined, dealt.key_id, expected_aggregate=th.aggregate_digest(a2)
        )


def test_dealer_output_holds_no_full_key(params, dealt, monkeypatch) -> None:
    # Reconstruct s from T shares (only a test can): it is ternary, no share equals it, and the
    # packed residues of s appear in no share file and not in the public key.
    rns = th._rns(params)
    ps = [1, 2, 3]
    s = np.zeros((len(params.primes), params.poly_modulus_degree), dtype=np.uint64)
    for i in ps:
        s = rns.add(
            s, rns.mul_scalars(_share(dealt, i).residues(), th.lagrange_at_zero(params, i, ps))
        )
    centred = rns.to_centered_ints(s)
    assert set(centred) <= {-1, 0, 1}
    files = [sh.to_bytes() for sh in dealt.shares] + [dealt.public_key]
    for j, b in enumerate(params.prime_bits):
        needle = th.pack_bits(s[j], b)[:64]
        assert not any(needle in f for f in files)
        assert not any(np.array_equal(sh.residues()[j], s[j]) for sh in dealt.shares)
    # T-1 shares interpolate to something unrelated to s (not ternary).
    two = rns.add(
        rns.mul_scalars(_share(dealt, 1).residues(), th.lagrange_at_zero(params, 1, [1, 2])),
        rns.mul_scalars(_share(dealt, 2).residues(), th.lagrange_at_zero(params, 2, [1, 2])),
    )
    assert len(set(rns.to_centered_ints(two))) > 1000
    # Dealing never serializes a secret key (nothing secret passes through a file).
    from fedpriv.crypto import _scratch

    saved: list[str] = []
    real = _scratch.save_to_bytes

    def spy(obj):
        saved.append(type(obj).__name__)
        return real(obj)

    monkeypatch.setattr(_scratch, "save_to_bytes", spy)
    th.deal(params, [1, 2, 3])
    assert saved == ["PublicKey"]


def test_share_files_round_trip_and_refuse_tampering(params, dealt, tmp_path: Path) -> None:
    share = dealt.shares[1]
    data = share.to_bytes()
    back = th.KeyShare.from_bytes(data, params)
    assert back.index == share.index and back.key_id == share.key_id
    assert np.array_equal(back.residues(), share.residues())
    rng = np.random.default_rng(0)
    for pos in [
        0,
        9,
        20,
        len(data) // 2,
        len(data) - 40,
        len(data) - 1,
        *rng.integers(0, len(data), 20),
    ]:
        bad = bytearray(data)
        bad[int(pos)] ^= 0x10
        with pytest.raises(CryptoError):
            th.KeyShare.from_bytes(bytes(bad), params)
    with pytest.raises(CryptoError):
        th.KeyShare.from_bytes(data[:-1], params)
    with pytest.raises(CryptoError):
        th.KeyShare.from_bytes(data + b"\x00", params)
    # Re-sealed (valid digest) but cut short or padded: still a clean CryptoError.
    from hashlib import sha256

    for body in (data[:60], data[:-100], data[:-32] + b"\x00" * 5):
        with pytest.raises(CryptoError):
            th.KeyShare.from_bytes(body + sha256(body).digest(), params)
    other = choose_threshold_params(NV, K, M, R, N_PARTIES, T, max_decryptions=2**10)
    with pytest.raises(CryptoError, match="other threshold parameters"):
        th.KeyShare.from_bytes(data, other)
    path = share.save(tmp_path)
    assert path.name == th.SHARE_FILE_NAME and (path.stat().st_mode & 0o777) == 0o600
    assert th.KeyShare.load(tmp_path, params).index == share.index
    os.chmod(path, 0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        th.KeyShare.load(path, params)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(share)


def test_masks_hide_the_combined_blob_and_cancel(params, dealt, encryptor) -> None:
    blobs, total = _updates(params, encryptor, 3, seed=6)
    aggregate = _aggregate(params, dealt, blobs)
    digest = th.aggregate_digest(aggregate)
    key = os.urandom(32)
    ps = [2, 4, 5]
    masks = {i: th.derive_mask(params, key, digest, i) for i in ps}
    partials = [_share(dealt, i).partial_decrypt(aggregate, ps, masks[i]) for i in ps]
    combined = th.combine_partials(params, aggregate, partials, dealt.key_id)
    out = th.finish_decryption(params, combined, dealt.key_id, masks)
    assert np.array_equal(np.rint(out.weighted_sum * params.quant_scale), total[:NV])
    with pytest.raises(CryptoError, match="need the masks"):
        th.finish_decryption(params, combined, dealt.key_id)
    wrong = {i: th.derive_mask(params, os.urandom(32), digest, i) for i in ps}
    with pytest.raises(CryptoError, match="sanity"):
        th.finish_decryption(params, combined, dealt.key_id, wrong)
    # What the relay holds is uniform mod 2^b: its values spread over the whole range.
    payload = combined[-32 - params.partial_payload_bytes : -32]
    vals = th.unpack_bits(payload, params.compress_bits, params.num_coefficients)
    counts = np.bincount(
        (vals >> np.uint64(params.compress_bits - 4)).astype(np.int64), minlength=16
    )
    expected = vals.size / 16
    assert float(((counts - expected) ** 2 / expected).sum()) < 60  # 15 dof


def test_reshare_adds_a_party_without_revealing_shares(params) -> None:
    d = th.deal(params, [1, 2, 3, 4])
    helpers = [1, 2, 3]
    keys = {(1, 2): os.urandom(32), (1, 3): os.urandom(32), (2, 3): os.urandom(32)}

    def pair(i: int) -> dict[int, bytes]:
        return {j: keys[(min(i, j), max(i, j))] for j in helpers if j != i}

    contribs = [th.reshare_contribution(_share(d, i), 5, helpers, pair(i)) for i in helpers]
    new = th.assemble_share(params, d.public_key, 5, contribs)
    assert new.index == 5
    enc = th.ThresholdEncryptor(params, d.public_key)
    blobs, total = _updates(params, enc, 2, seed=7)
    aggregate = _aggregate(params, d, blobs)
    ps = [2, 4, 5]
    shares = {2: _share(d, 2), 4: _share(d, 4), 5: new}
    partials = [shares[i].partial_decrypt(aggregate, ps) for i in ps]
    out = th.threshold_decrypt(params, aggregate, partials, d.key_id)
    assert np.array_equal(np.rint(out.weighted_sum * params.quant_scale), total[:NV])
    # One contribution is masked: it is not lambda_1(5) * S(1).
    rns = th._rns(params)
    lam = []
    for q in params.primes:
        num, den = (5 - 2) * (5 - 3) % q, (1 - 2) * (1 - 3) % q
        lam.append(num * pow(den, -1, q) % q)
    plain = rns.mul_scalars(_share(d, 1).residues(), lam)
    payload = contribs[0][
        -32 - sum(-(-params.poly_modulus_degree * b // 8) for b in params.prime_bits) : -32
    ]
    first = th.unpack_bits(
        payload[: -(-params.poly_modulus_degree * params.prime_bits[0] // 8)],
        params.prime_bits[0],
        params.poly_modulus_degree,
    )
    assert np.count_nonzero(first == plain[0]) < 10
    with pytest.raises(CryptoError, match="each of the 3 helpers"):
        th.assemble_share(params, d.public_key, 5, contribs[:2])


def test_batch_decoder_matches_seal(params) -> None:
    n, t = params.poly_modulus_degree, params.plain_modulus
    ctx = th._seal_context(params)
    encoder = seal.BatchEncoder(ctx)
    values = np.random.default_rng(8).integers(-(t // 2), t // 2 + 1, n)
    pt = seal.Plaintext()
    encoder.encode(values.tolist(), pt)
    coeffs = np.array([pt.data(i) for i in range(n)], dtype=np.uint64)
    assert np.array_equal(th.BatchDecoder(n, t).decode(coeffs), values)


def test_fresh_noise_stays_below_the_derived_bound(params, dealt) -> None:
    """The aggregate noise the flooding hides is within B_v (tparams), measured exactly."""
    from fedpriv.crypto._scratch import save_to_bytes

    rns = th._rns(params)
    ps = [1, 2, 3]
    s = np.zeros((len(params.primes), params.poly_modulus_degree), dtype=np.uint64)
    for i in ps:
        s = rns.add(
            s, rns.mul_scalars(_share(dealt, i).residues(), th.lagrange_at_zero(params, i, ps))
        )
    s_ntt = rns.ntt(s)
    ctx = th._seal_context(params)
    _, pk_bytes = th._load_public_key(params, dealt.public_key)
    pk = seal.PublicKey()
    from fedpriv.crypto._scratch import load_from_bytes

    load_from_bytes(pk, ctx, pk_bytes)
    enc, encoder = seal.Encryptor(ctx, pk), seal.BatchEncoder(ctx)
    n, t, q = params.poly_modulus_degree, params.plain_modulus, params.modulus
    acc = np.zeros((2, len(params.primes), n), dtype=np.uint64)
    msum = np.zeros(n, dtype=object)
    rng = np.random.default_rng(9)
    for _ in range(params.max_clients):
        pt = seal.Plaintext()
        encoder.encode(rng.integers(0, t, n).tolist(), pt)
        ct = seal.Ciphertext()
        enc.encrypt(pt, ct)
        polys = th._seal_polys(save_to_bytes(ct), n, len(params.primes), ntt=False)
        acc = np.stack([rns.add(acc[0], polys[0]), rns.add(acc[1], polys[1])])
        msum += np.array([pt.data(i) for i in range(n)], dtype=object)
    x = rns.to_centered_ints(rns.add(acc[0], rns.intt(rns.mul_pointwise(rns.ntt(acc[1]), s_ntt))))
    noise = [
        ((v - (q * int(m) % (q * t)) // t) + q // 2) % q - q // 2
        for v, m in zip(x, msum, strict=True)
    ]
    bound = params.noise_budget().noise_bound
    assert max(abs(v) for v in noise) <= bound
    assert max(abs(v) for v in noise) > 0


def test_flooding_is_the_sum_of_three_uniforms() -> None:
    w = 4
    p = 12289  # the residue mod a prime is the centred value mod p
    x = th.flooding_noise(200_000, w, [p])[0].astype(np.int64)
    x[x > p // 2] -= p
    big = 1 << w
    assert x.min() >= -3 * big // 2 and x.max() <= 3 * big // 2
    # Exact distribution: A1 + A2 + A3 + J - 3W/2, J in {0,1,2} w.p. (1/6, 2/3, 1/6).
    pmf = np.ones(big) / big
    pmf = np.convolve(np.convolve(pmf, pmf), pmf)
    pmf = np.convolve(pmf, [1 / 6, 2 / 3, 1 / 6])
    counts = np.bincount(x + 3 * big // 2, minlength=pmf.size)
    expected = pmf * x.size
    keep = expected > 5
    chi2 = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert chi2 < keep.sum() + 6 * math.sqrt(2 * keep.sum())
    wide = th.flooding_noise(10_000, 100, [2**31 - 1])  # 3 limbs: any width up to 120 bits
    assert wide.shape == (1, 10_000) and wide.max() < 2**31 - 1


def test_parameters_round_trip_and_refuse_weakening(params) -> None:
    d = params.to_dict()
    assert ThresholdParams.from_dict(d) == params
    assert ThresholdParams.from_json(params.to_json()).fingerprint() == params.fingerprint()
    for field, value in (
        ("flood_bits", params.flood_bits - 1),
        ("compress_bits", params.compress_bits - 1),
        ("statistical_security", params.statistical_security + 8),
        ("max_decryptions", params.max_decryptions * 2**20),
        ("threshold", N_PARTIES + 1),
        ("primes", list(params.primes[:-1])),
        ("quant_scale", params.quant_scale * 2),
    ):
        bad = dict(d, **{field: value})
        with pytest.raises(WireError):
            ThresholdParams.from_dict(bad)
    with pytest.raises(WireError, match="unknown"):
        ThresholdParams.from_dict(dict(d, extra=1))


def test_he_standard_table_matches_seal() -> None:
    for n, bits in HE_STANDARD_MAX_BITS.items():
        assert seal.CoeffModulus.MaxBitCount(n, seal.SEC_LEVEL_TYPE.TC128) == bits


def test_chooser_meets_its_bounds_and_reports_sizes() -> None:
    p = choose_threshold_params(6090, 10, 256, 4.0, 10, 6)
    b = p.noise_budget()
    assert b.statistical_distance_log2 <= -p.statistical_security
    assert b.q_log2 >= b.q_log2_needed and b.security_bits_used <= b.security_bits_allowed
    assert b.failure_log2 < -39.9  # 2^-40 (flooding sum) + 2^-48 (ciphertext noise bound)
    assert p.quant_scale >= 32 and p.plain_modulus < 2**31
    assert th.update_blob_bytes(p) == p.max_blob_bytes
    assert th.partial_blob_bytes(p) < 3 * 4 * 6090
    # Stronger statistical security costs modulus bits, never silently less.
    p60 = choose_threshold_params(6090, 10, 256, 4.0, 10, 6, statistical_security=60)
    assert p60.flood_bits >= p.flood_bits + 20 and p60.modulus > p.modulus
    with pytest.raises(ConfigError, match="threshold"):
        choose_threshold_params(100, 10, 256, 4.0, 3, 4)


def test_aggregate_is_order_independent_and_recomputable(params, dealt, encryptor) -> None:
    """Decrypting clients can rebuild the aggregate from the signed updates and compare bytes."""
    blobs, _ = _updates(params, encryptor, 3, seed=10)
    forward = _aggregate(params, dealt, blobs)
    backward = _aggregate(params, dealt, blobs[::-1])
    assert forward == backward
    assert th.aggregate_digest(forward) != th.aggregate_digest(_aggregate(params, dealt, blobs[:2]))


def test_public_params_dispatch(params) -> None:
    from fedpriv.crypto.codec import params_from_dict

    back = params_from_dict(params.to_dict())
    assert back == params and back.max_blob_bytes == th.update_blob_bytes(params)
