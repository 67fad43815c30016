"""Malformed blobs are refused with WireError before they touch the running sum.

Both wire versions are fuzzed: version 2 (bit-packed BFV ciphertexts, what clients send now)
and version 1 (SEAL's own serialization, still accepted). The SEAL-header cases apply to version
1 only; version 2 has its own (exact lengths, coefficients not reduced, PRNG type).
"""

from __future__ import annotations

import contextlib
import random
import struct
from collections.abc import Callable
from hashlib import sha256

import numpy as np
import pytest
import tenseal.sealapi as seal

from fedpriv.crypto import Aggregator, HEParams, KeyHolder, choose_params
from fedpriv.crypto.packed import SEED_INFO_BYTES, packed_entry_bytes
from fedpriv.crypto.params import WIRE_DIGEST_BYTES, WIRE_HEADER_BYTES
from fedpriv.crypto.wire import pack
from fedpriv.errors import CryptoError, WireError

N_VALUES = 5000  # several BFV ciphertexts, so framing between entries is exercised
Setup = tuple[HEParams, KeyHolder, list[bytes], list[np.ndarray], list[int]]


def _setup(version: int) -> Setup:
    params = choose_params("bfv", N_VALUES, max_clients=4, max_weight=100, value_range=2.0)
    kh = KeyHolder.generate(params)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-2, 2, N_VALUES) for _ in range(3)]
    ws = [10, 55, 100]
    blobs = [kh.encrypt(x, w, wire_version=version).blob for x, w in zip(xs, ws, strict=True)]
    assert all(b[4] == version for b in blobs)
    return params, kh, blobs, xs, ws


@pytest.fixture(scope="module")
def setup() -> Setup:
    """Version 1 blobs (SEAL's serialization inside the frame)."""
    return _setup(1)


@pytest.fixture(scope="module")
def setup_v2() -> Setup:
    """Version 2 blobs (bit-packed), what KeyHolder.encrypt writes by default."""
    return _setup(2)


@pytest.fixture(scope="module", params=[1, 2], ids=["v1-seal", "v2-packed"])
def setup_any(request: pytest.FixtureRequest, setup: Setup, setup_v2: Setup) -> Setup:
    return setup if request.param == 1 else setup_v2


def _assert_sum(kh: KeyHolder, agg: Aggregator, xs: list[np.ndarray], ws: list[int]) -> None:
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (len(xs), sum(ws))
    ref = sum(w * x for x, w in zip(xs, ws, strict=True)) / sum(ws)
    assert np.max(np.abs(out.mean() - ref)) <= kh.params.error_bound(sum(ws), len(xs))


def _reseal(body: bytes) -> bytes:
    """Recompute the trailing digest, as an attacker (or a buggy sender) could."""
    return body[:-WIRE_DIGEST_BYTES] + sha256(body[:-WIRE_DIGEST_BYTES]).digest()


def _set(blob: bytes, offset: int, value: bytes) -> bytes:
    return _reseal(blob[:offset] + value + blob[offset + len(value) :])


# Header offsets: magic 0, version 4, kind 5, scheme 6, fingerprint 7..38, count 39..42.
CASES: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "empty": (lambda b: b"", "too short"),
    "header only": (lambda b: b[:WIRE_HEADER_BYTES], "too short"),
    "truncated in first length": (lambda b: b[: WIRE_HEADER_BYTES + 2], "too short|truncated"),
    "truncated mid-ciphertext": (lambda b: b[: len(b) // 2], "truncated|unexpected|digest"),
    "truncated digest": (lambda b: b[:-1], "unexpected|truncated|digest"),
    "resealed truncation": (lambda b: _reseal(b[: len(b) // 2]), "truncated"),
    "trailing garbage": (lambda b: b + b"\x00" * 8, "unexpected bytes"),
    "resealed trailing garbage": (lambda b: _reseal(b + b"junk" + b[-32:]), "unexpected bytes"),
    "magic": (lambda b: b"FPHX" + b[4:], "magic"),
    "version": (lambda b: _set(b, 4, b"\x07"), "version"),
    "v1 framed as v2": (lambda b: _set(b, 4, b"\x02"), "packed|at most"),
    "kind": (lambda b: _set(b, 5, b"\x07"), "kind"),
    "kind aggregate": (lambda b: _set(b, 5, b"\x02"), "kind"),
    "scheme": (lambda b: _set(b, 6, b"\x02"), "scheme"),
    "fingerprint bit": (lambda b: b[:7] + bytes([b[7] ^ 1]) + b[8:], "fingerprint"),
    "count": (lambda b: _set(b, 39, struct.pack(">I", 1)), "count"),
    "huge count": (lambda b: _set(b, 39, b"\xff\xff\xff\xff"), "count"),
    "huge length": (lambda b: _set(b, WIRE_HEADER_BYTES, b"\xff\xff\xff\xff"), "declares"),
    "zero length": (lambda b: _set(b, WIRE_HEADER_BYTES, b"\x00\x00\x00\x00"), "empty"),
    "length off by one": (
        lambda b: _set(
            b, WIRE_HEADER_BYTES, struct.pack(">I", struct.unpack_from(">I", b, 43)[0] - 1)
        ),
        "declares|SEAL|unexpected|truncated",
    ),
    "payload bit flip": (lambda b: b[:100] + bytes([b[100] ^ 0x10]) + b[101:], "digest"),
    "SEAL header magic": (lambda b: _set(b, 47, b"\x00\x00"), "SEAL header"),
    "SEAL compression mode": (lambda b: _set(b, 47 + 5, b"\x01"), "compression"),
    "SEAL declared size": (lambda b: _set(b, 47 + 8, b"\x00\x10"), "SEAL header says"),
    "oversized": (lambda b: b + b"\x00" * (10 * len(b)), "too large"),
}


def _first_seed_info(params: HEParams) -> int:
    """Offset of the first packed update's PRNG type byte in a version 2 blob."""
    return WIRE_HEADER_BYTES + 4 + packed_entry_bytes(params, 1) - SEED_INFO_BYTES


P = choose_params("bfv", N_VALUES, max_clients=4, max_weight=100, value_range=2.0)
ENTRY = packed_entry_bytes(P, 1)
# Cases that apply to version 2 blobs (first entry at offset 47, ENTRY bytes long).
CASES_V2: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    **{
        k: v
        for k, v in CASES.items()
        if not k.startswith(("SEAL", "v1 framed")) and k != "length off by one"
    },
    "v2 framed as v1": (lambda b: _set(b, 4, b"\x01"), "SEAL header|compression|shorter"),
    "packed length off by one": (
        lambda b: _set(b, WIRE_HEADER_BYTES, struct.pack(">I", ENTRY - 1)),
        "packed one has",
    ),
    "packed length plus one": (
        lambda b: _set(b, WIRE_HEADER_BYTES, struct.pack(">I", ENTRY + 1)),
        "at most|packed one has",
    ),
    "coefficient not reduced": (
        lambda b: _set(b, WIRE_HEADER_BYTES + 4, b"\xff" * 4),  # 32 one-bits >= q
        "not reduced",
    ),
    "last coefficient not reduced": (
        lambda b: _set(b, _first_seed_info(P) - 4, b"\xff" * 4),
        "not reduced",
    ),
    "PRNG type unknown": (lambda b: _set(b, _first_seed_info(P), b"\x00"), "PRNG type"),
    "PRNG type out of range": (lambda b: _set(b, _first_seed_info(P), b"\x09"), "PRNG type"),
}


@pytest.mark.parametrize("case", list(CASES_V2))
def test_malformed_v2_blob_is_refused_and_sum_kept(setup_v2: Setup, case: str) -> None:
    _refused_and_sum_kept(setup_v2, *CASES_V2[case])


@pytest.mark.parametrize("case", list(CASES))
def test_malformed_blob_is_refused_and_sum_kept(setup: Setup, case: str) -> None:
    _refused_and_sum_kept(setup, *CASES[case])


def _refused_and_sum_kept(setup: Setup, mutate: Callable[[bytes], bytes], reason: str) -> None:
    params, kh, blobs, xs, ws = setup
    assert params == P
    agg = Aggregator(params)
    agg.add(blobs[0])
    bad = mutate(blobs[1])
    assert bad != blobs[1]
    with pytest.raises(WireError, match=reason):
        agg.add(bad)
    with pytest.raises(WireError):
        agg.validate(bad)
    assert agg.count == 1
    agg.add(blobs[1])
    _assert_sum(kh, agg, xs[:2], ws[:2])


def test_blob_from_other_params_is_refused(
    setup_any: Setup,
) -> None:
    params, _, _, xs, _ = setup_any
    other = choose_params("bfv", N_VALUES, max_clients=4, max_weight=99, value_range=2.0)
    assert other.num_ciphertexts == params.num_ciphertexts
    foreign = KeyHolder.generate(other).encrypt(xs[0], 5).blob
    agg = Aggregator(params)
    with pytest.raises(WireError, match="fingerprint"):
        agg.add(foreign)
    smaller = choose_params("bfv", 10, max_clients=4, max_weight=100, value_range=2.0)
    with pytest.raises(WireError):
        agg.add(KeyHolder.generate(smaller).encrypt(np.zeros(10), 5).blob)
    ckks = choose_params("ckks", N_VALUES, max_clients=4, max_weight=100, value_range=2.0)
    with pytest.raises(WireError):
        agg.add(KeyHolder.generate(ckks).encrypt(xs[0], 5).blob)
    assert agg.count == 0


def test_aggregate_is_not_an_update_and_too_many_summands(
    setup_any: Setup,
) -> None:
    params, kh, blobs, xs, ws = setup_any
    agg = Aggregator(params)
    for b in blobs:
        agg.add(b)
    aggregate = agg.result()
    with pytest.raises(WireError, match="kind"):
        agg.add(aggregate)
    agg.add(blobs[0])  # the 4th summand = max_clients
    with pytest.raises(WireError, match="too many summands"):
        agg.add(blobs[1])
    assert agg.count == 4
    _assert_sum(kh, agg, [*xs, xs[0]], [*ws, ws[0]])
    agg.reset()
    assert agg.count == 0
    with pytest.raises(WireError, match="nothing to aggregate"):
        agg.result()


def test_non_bytes_and_transparent_ciphertext_refused(
    setup: tuple[HEParams, KeyHolder, list[bytes], list[np.ndarray], list[int]],
) -> None:
    params = setup[0]
    agg = Aggregator(params)
    with pytest.raises(WireError, match="expected bytes"):
        agg.add("FPHE")  # type: ignore[arg-type]
    # An all-zero ciphertext is well formed but transparent (its plaintext in the clear).
    public = agg._public
    zero = seal.Ciphertext(public.context)
    zero.resize(public.context, 2)
    assert zero.is_transparent()
    transparent = pack(params, 1, [public.dump(zero)] * params.num_ciphertexts)
    with pytest.raises(WireError, match="transparent"):
        agg.add(transparent)
    assert agg.count == 0


def _mutate(rng: random.Random, blob: bytes) -> bytes:
    b = bytearray(blob)
    op = rng.randrange(7)
    pos = rng.randrange(len(b))
    if op == 0:  # bit flip
        b[pos] ^= 1 << rng.randrange(8)
    elif op == 1:  # random byte
        b[pos] = rng.randrange(256)
    elif op == 2:  # truncate
        del b[pos:]
    elif op == 3:  # delete a run
        del b[pos : pos + rng.randrange(1, 64)]
    elif op == 4:  # insert random bytes
        b[pos:pos] = rng.randbytes(rng.randrange(1, 64))
    elif op == 5:  # flip a bit in the header (most sensitive region)
        hp = rng.randrange(WIRE_HEADER_BYTES + 8)
        b[hp] ^= 1 << rng.randrange(8)
    else:  # duplicate a slice
        end = min(len(b), pos + rng.randrange(1, 256))
        b[pos:pos] = b[pos:end]
    return bytes(b)


def test_mutation_loop_keeps_running_sum_correct(
    setup_any: Setup,
) -> None:
    params, kh, blobs, xs, ws = setup_any
    rng = random.Random(20240601)
    agg = Aggregator(params)
    agg.add(blobs[0])
    tried = 0
    while tried < 400:
        source = blobs[rng.randrange(3)]
        bad = _mutate(rng, source)
        if bad == source:
            continue
        tried += 1
        with pytest.raises(WireError):
            agg.add(bad)
    assert agg.count == 1
    agg.add(blobs[1])
    agg.add(blobs[2])
    _assert_sum(kh, agg, xs, ws)


def test_resealed_ciphertext_mutations_never_crash(
    setup: tuple[HEParams, KeyHolder, list[bytes], list[np.ndarray], list[int]],
) -> None:
    """With a valid digest, SEAL's own checks decide: only WireError may escape.

    SEAL ciphertexts carry no integrity, so some payload mutations still decode; that is why
    senders must be authenticated at the transport.
    """
    params, _, blobs, _, _ = setup
    rng = random.Random(7)
    agg = Aggregator(params)
    first = WIRE_HEADER_BYTES + 4  # first ciphertext starts here
    accepted = refused = 0
    for _ in range(300):
        b = bytearray(blobs[0])
        op = rng.randrange(3)
        pos = rng.randrange(first, len(b) - WIRE_DIGEST_BYTES)
        if op == 0:
            b[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[pos] = rng.randrange(256)
        else:  # SEAL's own header region of the first ciphertext
            b[first + rng.randrange(16)] ^= 1 << rng.randrange(8)
        try:
            agg.validate(_reseal(bytes(b)))
            accepted += 1
        except WireError:
            refused += 1
    assert refused > 0 and accepted + refused == 300


def test_resealed_packed_mutations_never_crash(setup_v2: Setup) -> None:
    """Version 2 payload mutations behind a valid digest: only WireError may escape.

    A packed coefficient that stays below q is a valid ciphertext (SEAL has no integrity
    either); one pushed to q or above, a wrong PRNG type or a wrong length is refused.
    """
    params, _, blobs, _, _ = setup_v2
    rng = random.Random(8)
    agg = Aggregator(params)
    first, seed_at = WIRE_HEADER_BYTES + 4, _first_seed_info(params)
    accepted = refused = 0
    for _ in range(300):
        b = bytearray(blobs[0])
        op = rng.randrange(3)
        if op == 0:
            b[rng.randrange(first, len(b) - WIRE_DIGEST_BYTES)] ^= 1 << rng.randrange(8)
        elif op == 1:  # all ones in one 32-bit coefficient: at least q
            c = rng.randrange(params.poly_modulus_degree)
            b[first + 4 * c : first + 4 * c + 4] = b"\xff\xff\xff\xff"
        else:
            b[seed_at] = rng.choice([0, 3, 255])
        try:
            agg.validate(_reseal(bytes(b)))
            accepted += 1
        except WireError:
            refused += 1
    assert refused >= 150 and accepted > 0 and accepted + refused == 300


def test_accepted_corruption_never_yields_a_wrong_mean(
    setup_any: Setup,
) -> None:
    """A payload flip SEAL cannot see is either absorbed as noise or caught at decryption."""
    params, kh, blobs, xs, ws = setup_any
    rng = random.Random(11)
    first = WIRE_HEADER_BYTES + 4
    outcomes = {"refused": 0, "harmless": 0, "caught": 0}
    for _ in range(60):
        b = bytearray(blobs[1])
        b[rng.randrange(first + 16, len(b) - WIRE_DIGEST_BYTES)] ^= 1 << rng.randrange(8)
        agg = Aggregator(params)
        agg.add(blobs[0])
        try:
            agg.add(_reseal(bytes(b)))
        except WireError:
            outcomes["refused"] += 1
            continue
        try:
            out = kh.decrypt(agg.result())
        except CryptoError:
            outcomes["caught"] += 1
            continue
        # Not caught: then it must be the exact, correct aggregate.
        outcomes["harmless"] += 1
        assert out.count == 2
        _assert_sum(kh, agg, xs[:2], ws[:2])
    assert outcomes["caught"] > 0


def test_ckks_malformed_and_resealed_mutations() -> None:
    params = choose_params("ckks", 3000, max_clients=3, max_weight=10, value_range=1.0)
    kh = KeyHolder.generate(params)
    x = np.linspace(-1, 1, 3000)
    good = kh.encrypt(x, 5).blob
    agg = Aggregator(params)
    agg.add(good)
    rng = random.Random(3)
    first = WIRE_HEADER_BYTES + 4
    for i in range(150):
        if i < 100:
            bad = _mutate(rng, good)
            if bad == good:
                continue
        else:  # valid frame, corrupted TenSEAL/SEAL payload
            b = bytearray(good)
            b[rng.randrange(first, first + 64)] ^= 1 << rng.randrange(8)
            bad = _reseal(bytes(b))
        with contextlib.suppress(WireError):
            agg.validate(bad)
        if i < 100:
            with pytest.raises(WireError):
                agg.add(bad)
    # A vector of the wrong length inside a valid frame.
    short = kh.encrypt(x, 5).blob
    other = KeyHolder.generate(choose_params("ckks", 10, 3, 10, 1.0)).encrypt(np.zeros(10), 1).blob
    inner = other[WIRE_HEADER_BYTES + 4 : -WIRE_DIGEST_BYTES]
    n0 = struct.unpack_from(">I", short, WIRE_HEADER_BYTES)[0]
    spliced = (
        short[:WIRE_HEADER_BYTES]
        + struct.pack(">I", len(inner))
        + inner
        + short[WIRE_HEADER_BYTES + 4 + n0 :]
    )
    with pytest.raises(WireError, match="values, expected"):
        agg.add(_reseal(spliced))
    assert agg.count == 1
    agg.add(good)
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (2, 10)
    np.testing.assert_allclose(out.mean(), x, atol=params.error_bound(10, 2))
