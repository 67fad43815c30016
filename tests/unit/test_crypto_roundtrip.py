"""Encrypted aggregation equals plaintext weighted FedAvg within the documented error bound."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest

from fedpriv.crypto import Aggregator, HEParams, KeyHolder, choose_params
from fedpriv.errors import CryptoError

R = 4.0


def _updates(
    rng: np.random.Generator, k: int, n: int, max_w: int
) -> tuple[list[np.ndarray], list[int]]:
    xs, ws = [], []
    for i in range(k):
        x = rng.uniform(-R, R, n)
        # Values at and next to the range edges: quantization must not overflow there.
        x[: n // 4] = R if i % 2 else -R
        x[n // 4 : n // 2] = np.nextafter(R, 0) * (1 if i % 3 else -1)
        xs.append(x.astype(np.float32))
        ws.append(int(rng.integers(1, max_w + 1)))
    return xs, ws


def _check_fedavg(params: HEParams, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    kh = KeyHolder.generate(params)
    agg = Aggregator(params)
    xs, ws = _updates(rng, k, params.num_values, params.max_weight)
    for x, w in zip(xs, ws, strict=True):
        u = kh.encrypt(x, w)
        assert u.clipped == 0 and u.weight_used == w and not u.weight_capped
        agg.add(u.blob)
    assert agg.count == k
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (k, sum(ws))
    ref = sum(w * x.astype(np.float64) for x, w in zip(xs, ws, strict=True)) / sum(ws)
    err = np.max(np.abs(out.mean() - ref))
    assert err <= params.error_bound(out.total_weight, out.count), err
    assert out.weighted_sum.dtype == np.float64 and out.mean().shape == (params.num_values,)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_bfv_weighted_fedavg(k: int) -> None:
    params = choose_params("bfv", 5000, max_clients=10, max_weight=1000, value_range=R)
    _check_fedavg(params, k, seed=k)


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ckks_weighted_fedavg(k: int) -> None:
    params = choose_params("ckks", 5000, max_clients=10, max_weight=1000, value_range=R)
    _check_fedavg(params, k, seed=100 + k)


def test_bfv_q32_precision_is_fine_for_small_federations() -> None:
    params = choose_params("bfv", 3000, max_clients=3, max_weight=100, value_range=R)
    assert params.coeff_modulus_bits == (32,)
    _check_fedavg(params, 3, seed=7)
    assert params.error_bound(150, 3) < 1e-4


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_clipping_and_weight_cap_are_reported(scheme: str) -> None:
    params = choose_params(scheme, 1000, max_clients=3, max_weight=50, value_range=1.0)
    kh = KeyHolder.generate(params)
    x = np.linspace(-2.0, 2.0, 1000)
    x[0], x[1] = np.inf, -np.inf
    expected_clipped = int(np.count_nonzero(np.abs(x) > 1.0))
    u = kh.encrypt(x, 80)
    assert u.clipped == expected_clipped > 0
    assert u.weight_used == 50 and u.weight_capped
    agg = Aggregator(params)
    agg.add(u.blob)
    out = kh.decrypt(agg.result())
    assert out.total_weight == 50 and out.count == 1
    np.testing.assert_allclose(out.mean(), np.clip(x, -1, 1), atol=params.error_bound(50, 1))


def test_zero_weight_client_counts_but_adds_nothing() -> None:
    params = choose_params("bfv", 100, 3, 10, 1.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    agg.add(kh.encrypt(np.full(100, 0.5), 0).blob)
    agg.add(kh.encrypt(np.full(100, -0.25), 4).blob)
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (2, 4)
    np.testing.assert_allclose(out.mean(), -0.25, atol=params.error_bound(4, 2))


def test_stochastic_rounding_is_unbiased() -> None:
    # A value between two quantization steps averages to itself over many encryptions.
    params = choose_params("bfv", 4000, 1, 1, 1.0)
    kh = KeyHolder.generate(params)
    v = 0.3 / params.quant_scale  # 0.3 of a quantization step
    out = kh.decrypt(kh.encrypt(np.full(4000, v), 1).blob)
    assert abs(out.mean().mean() - v) < 0.05 / params.quant_scale


def test_encrypt_rejects_bad_input() -> None:
    params = choose_params("bfv", 10, 3, 10, 1.0)
    kh = KeyHolder.generate(params)
    with pytest.raises(ValueError, match="expected 10"):
        kh.encrypt(np.zeros(11), 1)
    with pytest.raises(ValueError, match="NaN"):
        kh.encrypt(np.full(10, np.nan), 1)
    with pytest.raises(ValueError, match=">= 0"):
        kh.encrypt(np.zeros(10), -1)
    with pytest.raises(ValueError, match="integer"):
        kh.encrypt(np.zeros(10), 1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="real"):
        kh.encrypt(np.array(["a"] * 10), 1)
    # Any shape with the right number of elements is fine (models are flattened).
    kh.encrypt(np.zeros((2, 5), dtype=np.float32), 1)


def test_wrong_key_is_detected() -> None:
    params = choose_params("bfv", 100, 3, 10, 1.0)
    a, b = KeyHolder.generate(params), KeyHolder.generate(params)
    agg = Aggregator(params)
    agg.add(a.encrypt(np.zeros(100), 3).blob)
    with pytest.raises(CryptoError):
        b.decrypt(agg.result())


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_key_save_load_roundtrip(tmp_path: Path, scheme: str) -> None:
    params = choose_params(scheme, 100, 3, 10, 1.0)
    kh = KeyHolder.generate(params)
    path = kh.save(tmp_path)
    assert path.parent == tmp_path and os.stat(path).st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    loaded = KeyHolder.load(path)
    assert loaded.params == params
    assert loaded.secret_key_bytes() == kh.secret_key_bytes()
    agg = Aggregator(params)
    agg.add(kh.encrypt(np.full(100, 0.5), 2).blob)
    agg.add(loaded.encrypt(np.full(100, -0.5), 2).blob)
    out = loaded.decrypt(agg.result())
    np.testing.assert_allclose(out.mean(), 0.0, atol=params.error_bound(4, 2))
    # Overwriting in place is atomic and keeps the mode.
    KeyHolder.generate(params).save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_key_holder_cannot_be_copied_or_pickled() -> None:
    kh = KeyHolder.generate(choose_params("bfv", 10, 3, 10, 1.0))
    with pytest.raises(TypeError, match="cannot be pickled"):
        copy.copy(kh)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_bfv_extreme_sum_does_not_wrap(sign: float) -> None:
    # max_clients summands, all at the weight cap and the range edge: the largest possible sum.
    params = choose_params("bfv", 100, max_clients=10, max_weight=1000, value_range=R)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    for _ in range(10):
        agg.add(kh.encrypt(np.full(100, sign * 10 * R), 1000).blob)
    out = kh.decrypt(agg.result())
    assert (out.count, out.total_weight) == (10, 10_000)
    np.testing.assert_allclose(out.mean(), sign * R, atol=params.error_bound(10_000, 10))
