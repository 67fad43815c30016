"""Upload and aggregate sizes (expansion over float32 bytes)."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.crypto import Aggregator, KeyHolder, choose_params


def test_bfv_q32_upload_is_about_float32_size() -> None:
    n = 100_000
    params = choose_params("bfv", n, max_clients=10, max_weight=100, value_range=4.0)
    assert params.coeff_modulus_bits == (32,)  # q = 32 bits is feasible here
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    rng = np.random.default_rng(0)
    for _ in range(2):
        u = kh.encrypt(rng.normal(0, 1, n).astype(np.float32), 100)
        assert len(u.blob) <= 1.1 * 4 * n
        assert len(u.blob) <= params.max_blob_bytes
        agg.add(u.blob)
    aggregate = agg.result()
    assert len(aggregate) <= 2.2 * 4 * n
    assert kh.decrypt(aggregate).count == 2


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_blob_size_bounds_hold(scheme: str) -> None:
    params = choose_params(scheme, 9000, max_clients=5, max_weight=100, value_range=4.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    u = kh.encrypt(np.random.default_rng(1).uniform(-4, 4, 9000), 100)
    assert len(u.blob) <= params.max_blob_bytes
    agg.add(u.blob)
    agg.add(u.blob)
    assert len(agg.result()) <= params.max_blob_bytes_for(2)
