"""Threshold custody under attack.

* The server (every ciphertext and the aggregate) with T-1 colluding share holders and the
  honest parties' partial decryptions of the aggregate tries to read one client's update: its
  best attempts are statistically indistinguishable from uniform, while the same statistic flags
  a decryption that does use T shares.
* Wire fuzz: every threshold blob kind, truncated, bit-flipped, oversized, for other parameters
  or another key, with a coefficient >= its prime or non-zero padding, is refused with a clear
  WireError (never another exception, never a crash).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from hashlib import sha256

import numpy as np
import pytest
from scipy import stats

from fedpriv.crypto import threshold as th
from fedpriv.crypto.tparams import ThresholdParams, choose_threshold_params
from fedpriv.errors import CryptoError, WireError
from fedpriv.privacy.rng import InsecureTestRandom

NV, K, M, R, N_PARTIES, T = 3000, 4, 50, 2.0, 5, 3
COLLUDERS = (1, 2)  # T - 1 share holders working with the server
HONEST = 3


@pytest.fixture(scope="module")
def world():
    params = choose_threshold_params(NV, K, M, R, N_PARTIES, T)
    dealt = th.deal(params)
    enc = th.ThresholdEncryptor(params, dealt.public_key)
    rng = np.random.default_rng(0)
    updates = [(rng.uniform(-R, R, NV), int(rng.integers(1, M + 1))) for _ in range(K)]
    blobs = [enc.encrypt(x, w, rng=InsecureTestRandom(i)).blob for i, (x, w) in enumerate(updates)]
    agg = th.ThresholdAggregator(params, dealt.key_id)
    for b in blobs:
        agg.add(b)
    aggregate = agg.result()
    shares = {s.index: s for s in dealt.shares}
    return params, dealt, enc, updates, blobs, aggregate, shares


def _slots_of(params: ThresholdParams, c0c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """What a combiner computes from c0 (compressed) and a candidate s*c1: decoded slots mod t."""
    rns = th._rns(params)
    b, t = params.compress_bits, params.plain_modulus
    acc = (c0c + rns.scale_round_pow2(d, b)) & np.uint64((1 << b) - 1)
    plain = ((acc * np.uint64(t) + np.uint64(1 << (b - 1))) >> np.uint64(b)) % np.uint64(t)
    return th._decoder(params).decode(plain).reshape(-1) % t


def _uniformity_pvalue(values: np.ndarray, t: int) -> float:
    """Chi-square p-value of slot values against uniform on Z_t (64 equal bins)."""
    bins = (values.astype(np.float64) / t * 64).astype(np.int64)
    counts = np.bincount(bins, minlength=64)
    return float(stats.chisquare(counts).pvalue)


def test_server_and_t_minus_1_shares_cannot_read_one_update(world) -> None:
    params, dealt, _enc, _updates, blobs, aggregate, shares = world
    rns = th._rns(params)
    t = params.plain_modulus
    target = 0
    c0c, c1 = th._load_update(params, blobs[target], dealt.key_id)
    truth = _slots_of(
        params,
        c0c,
        rns.intt(rns.mul_pointwise(rns.ntt(c1), _secret_ntt(params, shares)[None])),
    )
    # The round the attackers take part in: P = colluders + one honest party.
    ps = [*COLLUDERS, HONEST]
    honest_partial = shares[HONEST].partial_decrypt(aggregate, ps)
    # (the honest party's view is the aggregate's decryption: that part is legitimate)
    colluders = [shares[i].partial_decrypt(aggregate, ps) for i in COLLUDERS]
    out = th.threshold_decrypt(params, aggregate, [*colluders, honest_partial], dealt.key_id)
    assert out.count == K

    # Attempt 1: interpolate with the T-1 colluding shares only.
    s_part = np.zeros_like(shares[1].residues())
    for i in COLLUDERS:
        s_part = rns.add(
            s_part, rns.mul_scalars(shares[i].residues(), th.lagrange_at_zero(params, i, ps))
        )
    d1 = rns.intt(rns.mul_pointwise(rns.ntt(c1), rns.ntt(s_part)[None]))
    guess1 = _slots_of(params, c0c, d1)

    # Attempt 2: also move the honest partial of the aggregate onto the target ciphertext:
    # d_h = lam_h S(h) C1 + e_h, so d_h * C1^-1 * c1 = lam_h S(h) c1 + (e_h C1^-1 c1).
    _, agg_c1, _ = th._load_aggregate(params, aggregate, dealt.key_id)
    agg_ntt = rns.ntt(agg_c1)
    assert np.all(agg_ntt != 0), "aggregate c1 not invertible (probability ~N/q)"
    inv = np.empty_like(agg_ntt)
    for j, q in enumerate(params.primes):
        inv[:, j, :] = np.array([pow(int(v), -1, q) for v in agg_ntt[:, j, :].ravel()]).reshape(
            agg_ntt[:, j, :].shape
        )
    dh = _partial_residues(params, honest_partial)
    moved = rns.intt(rns.mul_pointwise(rns.mul_pointwise(dh, inv), rns.ntt(c1)))
    guess2 = _slots_of(params, c0c, rns.add(d1, moved))

    # Attempt 3: subtract the colluders' own contributions from the decrypted aggregate's
    # combination and reuse it: the honest partial alone, scaled to the target.
    guess3 = _slots_of(params, c0c, moved)

    slots = params.num_coefficients
    assert truth.size == guess1.size == slots
    # The real decryption is far from uniform (small quantized values): the statistic sees it.
    assert _uniformity_pvalue(truth, t) < 1e-12
    for guess in (guess1, guess2, guess3):
        assert _uniformity_pvalue(guess, t) > 1e-6  # false alarm 1e-6 per check
        assert stats.kstest(guess / t, "uniform").pvalue > 1e-6
        assert np.count_nonzero(guess == truth) <= max(5, 10 * slots // t)
        centred = np.where(guess > t // 2, guess.astype(np.int64) - t, guess.astype(np.int64))
        true_c = np.where(truth > t // 2, truth.astype(np.int64) - t, truth.astype(np.int64))
        assert abs(np.corrcoef(centred, true_c)[0, 1]) < 0.1


def test_partial_decryption_of_a_single_update_is_refused(world) -> None:
    params, dealt, _enc, _updates, blobs, _aggregate, shares = world
    # An update blob is not an aggregate.
    with pytest.raises(WireError, match="wrong blob kind"):
        shares[1].partial_decrypt(blobs[0], [1, 2, 3])
    # A server re-framing one update as an "aggregate" of 1 is refused below k_min.
    agg = th.ThresholdAggregator(params, dealt.key_id)
    agg.add(blobs[0])
    single = agg.result()
    with pytest.raises(CryptoError, match="at least 2"):
        shares[1].partial_decrypt(single, [1, 2, 3], min_count=2)


def _secret_ntt(params: ThresholdParams, shares: dict[int, th.KeyShare]) -> np.ndarray:
    rns = th._rns(params)
    ps = list(range(1, T + 1))
    s = np.zeros_like(shares[1].residues())
    for i in ps:
        s = rns.add(s, rns.mul_scalars(shares[i].residues(), th.lagrange_at_zero(params, i, ps)))
    return rns.ntt(s)


def _partial_residues(params: ThresholdParams, blob: bytes) -> np.ndarray:
    """Lift a compressed partial back to R_q (NTT form): round(q * d' / 2^b)."""
    rns = th._rns(params)
    vals = th.unpack_bits(
        blob[-32 - params.partial_payload_bytes : -32],
        params.compress_bits,
        params.num_coefficients,
    )
    q, b = params.modulus, params.compress_bits
    lifted = [(int(v) * q + (1 << (b - 1))) >> b for v in vals]
    cts, n = params.num_ciphertexts, params.poly_modulus_degree
    out = np.stack(
        [
            np.array(
                [[lifted[c * n + i] % p for i in range(n)] for p in params.primes], dtype=np.uint64
            )
            for c in range(cts)
        ]
    )
    return rns.ntt(out)


# --------------------------------------------------------------------------- wire fuzz
def _reseal(blob: bytes) -> bytes:
    return blob[:-32] + sha256(blob[:-32]).digest()


def _mutations(blob: bytes, rng: random.Random) -> dict[str, bytes]:
    out = {
        "empty": b"",
        "header only": blob[:70],
        "truncated": blob[: len(blob) // 2],
        "truncated resealed": _reseal(blob[: len(blob) // 2]),
        "last byte missing": blob[:-1],
        "oversized": blob + b"\x00",
        "oversized resealed": _reseal(blob[:-32] + b"\x00" * 8 + blob[-32:]),
        "bad magic": _reseal(b"FPTX" + blob[4:]),
        "bad version": _reseal(blob[:4] + b"\x09" + blob[5:]),
        "wrong kind": _reseal(blob[:5] + b"\x07" + blob[6:]),
        "wrong fingerprint": _reseal(blob[:6] + bytes(32) + blob[38:]),
        "wrong key id": _reseal(blob[:38] + bytes(32) + blob[70:]),
    }
    for i in range(12):
        pos = rng.randrange(len(blob))
        flipped = bytearray(blob)
        flipped[pos] ^= 1 << rng.randrange(8)
        out[f"bit flip {i}"] = bytes(flipped)
    return out


def _refuses(fn: Callable[[bytes], object], blob: bytes, name: str) -> None:
    try:
        fn(blob)
    except WireError:
        return
    except Exception as e:  # anything else is a bug: the message must be a clear WireError
        raise AssertionError(f"{name}: {type(e).__name__}: {e}") from e
    raise AssertionError(f"{name}: accepted")


def _with_value(params: ThresholdParams, blob: bytes, offset: int, bits: int, value: int) -> bytes:
    """Rewrite the first packed value of a section to ``value`` and reseal (an attacker can)."""
    section = bytearray(blob)
    word = int.from_bytes(section[offset : offset + 8], "little")
    word = (word & ~((1 << bits) - 1)) | value
    section[offset : offset + 8] = word.to_bytes(8, "little")
    return _reseal(bytes(section))


def test_wire_fuzz_every_blob_kind(world) -> None:
    params, dealt, _enc, _updates, blobs, aggregate, shares = world
    rng = random.Random(1)
    kid = dealt.key_id
    ps = [1, 2, 3]
    partials = [shares[i].partial_decrypt(aggregate, ps) for i in ps]
    combined = th.combine_partials(params, aggregate, partials, kid)
    targets: dict[str, tuple[bytes, Callable[[bytes], object]]] = {
        "update": (blobs[0], th.ThresholdAggregator(params, kid).add),
        "aggregate": (aggregate, lambda b: shares[1].partial_decrypt(b, ps)),
        "partial": (
            partials[0],
            lambda b: th.combine_partials(params, aggregate, [b, *partials[1:]], kid),
        ),
        "combined": (combined, lambda b: th.finish_decryption(params, b, kid)),
        "public key": (dealt.public_key, lambda b: th.ThresholdEncryptor(params, b)),
    }
    for kind, (blob, fn) in targets.items():
        fn(blob)  # the genuine blob is accepted
        for name, bad in _mutations(blob, rng).items():
            _refuses(fn, bad, f"{kind}: {name}")
    # A coefficient >= its prime, with a valid digest, in an update and in the aggregate.
    c1_offset = 70 + (params.num_coefficients * params.compress_bits + 7) // 8
    for blob, fn, head in (
        (blobs[0], targets["update"][1], 0),
        (aggregate, targets["aggregate"][1], 4),
    ):
        bad = _with_value(params, blob, c1_offset + head, params.prime_bits[0], params.primes[0])
        with pytest.raises(WireError, match="not below its prime"):
            fn(bad)
    # Non-zero padding bits at the end of a packed section.
    m, b = params.num_coefficients, params.compress_bits
    if (m * b) % 8:
        end = 70 + (m * b + 7) // 8 - 1
        bad = bytearray(blobs[0])
        bad[end] |= 0x80
        with pytest.raises(WireError, match="padding"):
            th.ThresholdAggregator(params, kid).add(_reseal(bytes(bad)))
    # Other parameters: every blob is refused by fingerprint.
    other = choose_threshold_params(NV, K, M, R, N_PARTIES, T, max_decryptions=2**12)
    with pytest.raises(WireError):
        th.ThresholdAggregator(other, kid).add(blobs[0])
    with pytest.raises(WireError):
        th.combine_partials(other, aggregate, partials, kid)
    # A refused blob leaves the running sum untouched.
    agg = th.ThresholdAggregator(params, kid)
    agg.add(blobs[0])
    before = agg.result()
    with pytest.raises(WireError):
        agg.add(blobs[1][:-1])
    assert agg.result() == before and agg.count == 1
