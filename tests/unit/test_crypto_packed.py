"""Wire version 2: bit-packed BFV ciphertexts rebuild SEAL's exact serialization."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

from fedpriv.crypto import Aggregator, KeyHolder, choose_params
from fedpriv.crypto.bfv import BfvPublic
from fedpriv.crypto.packed import SEED_INFO_BYTES, pack_entry, packed_entry_bytes, unpack_entry
from fedpriv.crypto.params import KIND_AGGREGATE, KIND_UPDATE
from fedpriv.crypto.wire import unpack_frame
from fedpriv.errors import CryptoError, WireError


def _seal_body(data: bytes) -> bytes:
    """SEAL's serialization without its 16-byte header, decompressed."""
    body = data[16:]
    return zstandard.ZstdDecompressor().decompress(body) if data[5] == 2 else body


@pytest.mark.parametrize(("n", "k"), [(3000, 10), (6090, 100)])
def test_packed_entries_rebuild_seal_serialization_exactly(n: int, k: int) -> None:
    params = choose_params("bfv", n, max_clients=k, max_weight=200, value_range=4.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    public = BfvPublic(params)
    slots = np.zeros(params.num_ciphertexts * params.poly_modulus_degree, dtype=np.int64)
    seal_entries = kh._backend.encrypt(slots)  # SEAL's own (zstd) serialization
    bits = params.coeff_modulus_bits[0]
    for raw in seal_entries:
        packed = pack_entry(params, KIND_UPDATE, raw)
        assert len(packed) == packed_entry_bytes(params, KIND_UPDATE)
        assert len(packed) == params.poly_modulus_degree * bits // 8 + SEED_INFO_BYTES
        rebuilt = unpack_entry(params, KIND_UPDATE, packed, public._parms_id, public._primes, 0)
        assert _seal_body(rebuilt) == _seal_body(raw)
    agg.add(kh.encrypt(np.ones(n), 3).blob)
    frame = unpack_frame(agg.result(), params, frozenset({KIND_AGGREGATE}))
    assert frame.version == 2
    for e in frame.entries:
        assert len(e) == packed_entry_bytes(params, KIND_AGGREGATE)
        rebuilt = unpack_entry(params, KIND_AGGREGATE, e, public._parms_id, public._primes, 0)
        assert pack_entry(params, KIND_AGGREGATE, rebuilt) == e
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (1, 3)
    np.testing.assert_allclose(out.mean(), 1.0, atol=params.error_bound(3, 1))


def test_packed_upload_is_q_bits_per_coefficient() -> None:
    """100 clients need q = 37 bits: 37/32 of the float32 bytes (plus padding), not 6 bytes."""
    params = choose_params("bfv", 6090, max_clients=100, max_weight=256, value_range=4.0)
    assert params.coeff_modulus_bits == (37,)
    kh = KeyHolder.generate(params)
    v2 = kh.encrypt(np.zeros(6090), 10).blob
    v1 = kh.encrypt(np.zeros(6090), 10, wire_version=1).blob
    assert len(v2) / (4 * 6090) < 1.2 < len(v1) / (4 * 6090)
    agg = Aggregator(params)
    agg.add(v2)
    agg.add(v1)  # both versions are accepted and sum together
    assert len(agg.result()) / (4 * 6090) < 2.4
    assert kh.decrypt(agg.result()).count == 2


def test_pack_refuses_what_is_not_a_seeded_update() -> None:
    params = choose_params("bfv", 3000, max_clients=4, max_weight=10, value_range=1.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    agg.add(kh.encrypt(np.zeros(3000), 1).blob)
    full = agg._public.dump(agg._sum[0])  # type: ignore[index]
    with pytest.raises(CryptoError, match="shape"):
        pack_entry(params, KIND_UPDATE, full)
    with pytest.raises(CryptoError, match="SEAL"):
        pack_entry(params, KIND_UPDATE, b"\x00" * 64)
    public = agg._public
    assert isinstance(public, BfvPublic)
    good = pack_entry(params, KIND_AGGREGATE, full)
    with pytest.raises(WireError, match="packed bytes"):
        unpack_entry(params, KIND_AGGREGATE, good[:-1], public._parms_id, public._primes, 0)
