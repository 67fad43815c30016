"""Client-level distributed DP: noise distribution, clipping, accounting, BFV composition."""

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from fedpriv.config import load_config
from fedpriv.crypto import Aggregator, KeyHolder, choose_params
from fedpriv.privacy.client_level import (
    client_level_epsilon,
    client_level_epsilon_vs_server,
    client_level_plan,
    clip_update,
    discrete_gaussian,
    rounding_norm,
)
from fedpriv.privacy.rng import OsRandom


def test_csprng_uniforms_are_uniform() -> None:
    u = OsRandom().uniform(200_000)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002


@pytest.mark.parametrize("sigma", [0.7, 3.0, 40.0, 1500.0])
def test_discrete_gaussian_moments(sigma: float) -> None:
    n = 200_000
    x = discrete_gaussian(sigma, n)
    assert x.dtype == np.int64
    # mean within 5 standard errors; variance within 5 standard errors (var of s^2 ~ 2 sigma^4 / n)
    assert abs(x.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(x.var() - sigma**2) < 5 * math.sqrt(2 / n) * sigma**2 + 0.05


def test_discrete_gaussian_pmf_matches_for_small_sigma() -> None:
    sigma, n = 1.0, 300_000
    x = discrete_gaussian(sigma, n)
    ks = np.arange(-6, 7)
    pmf = np.exp(-(ks**2) / (2 * sigma**2))
    pmf /= pmf.sum()
    emp = np.array([(x == k).mean() for k in ks])
    assert np.all(np.abs(emp - pmf) < 5 * np.sqrt(pmf * (1 - pmf) / n) + 1e-4)


def test_clip_update() -> None:
    d = np.array([3.0, 4.0])
    c, was = clip_update(d, 1.0)
    assert was and np.isclose(np.linalg.norm(c), 1.0) and np.allclose(c, [0.6, 0.8])
    c, was = clip_update(d, 10.0)
    assert not was and np.array_equal(c, d)


def test_summed_noise_shares_have_the_intended_variance_under_bfv() -> None:
    """K clients each add a share; the decrypted sum carries noise of std z*Delta (real units),
    Delta = 2 (C + sqrt(d)/s): replace-one sensitivity with the rounding error included."""
    cfg = load_config(
        None,
        [
            "privacy.mode=client",
            "privacy.client_noise_multiplier=0.8",
            "privacy.client_clip_norm=0.5",
            "federation.num_clients=5",
        ],
    )
    n = 20_000
    first = client_level_plan(cfg, cfg.privacy.client_clip_norm)
    assert first.k_min == 5 and first.sample_rate == 1.0
    params = choose_params(
        "bfv", num_values=n, max_clients=5, max_weight=1, value_range=1.0 + first.headroom
    )
    plan = client_level_plan(cfg, rounding_norm(n, params.quant_scale))
    assert plan.sensitivity == pytest.approx(2 * (0.5 + math.sqrt(n) / params.quant_scale))
    assert plan.rounding_norm < plan.clip_norm
    holder = KeyHolder.generate(params)
    agg = Aggregator(params)
    rng = np.random.default_rng(0)
    updates = [rng.uniform(-0.5, 0.5, n).astype(np.float32) for _ in range(5)]
    for u in updates:
        noise = discrete_gaussian(plan.share_std * params.quant_scale, n)
        agg.add(holder.encrypt(u, 1, int_noise=noise).blob)
    out = holder.decrypt(agg.result())
    residual = out.weighted_sum - np.sum(np.asarray(updates, dtype=np.float64), axis=0)
    target = plan.noise_multiplier * plan.sensitivity
    # sample std of n normal draws: relative standard error ~ 1/sqrt(2n) = 0.5%
    assert residual.std() == pytest.approx(target, rel=0.03)
    assert abs(residual.mean()) < 5 * target / math.sqrt(n)


def test_client_level_accounting_is_replace_one_without_replacement() -> None:
    cfg = load_config(
        None,
        [
            "privacy.mode=client",
            "privacy.client_target_epsilon=4",
            "privacy.client_max_epsilon=4",
            "federation.fraction_train=0.5",
            "rounds=8",
        ],
    )
    plan = client_level_plan(cfg)
    assert plan.sample_rate == 0.5 and (plan.num_clients, plan.per_round) == (10, 5)
    eps = client_level_epsilon(plan, 8, 1e-5)
    assert eps <= 4.0 and eps == pytest.approx(4.0, abs=0.05)
    # monotone over rounds, so a budget check before each round refuses the first round past it
    series = [client_level_epsilon(plan, r, 1e-5) for r in range(1, 10)]
    assert all(a < b for a, b in itertools.pairwise(series))
    assert series[-1] > 4.0
    # against the server, which chose the sample, there is no amplification by sampling
    assert client_level_epsilon_vs_server(plan, 8, 1e-5) > eps
    assert client_level_epsilon_vs_server(plan, 4, 1e-5) > client_level_epsilon(plan, 4, 1e-5)


def test_unsampled_replace_one_gaussian_matches_an_independent_pld() -> None:
    """With every client in every round the mechanism is a plain Gaussian: dp-accounting's RDP
    (what fedpriv reports) upper-bounds the tight PLD and stays within 15% of it."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    cfg = load_config(None, ["privacy.mode=client", "privacy.client_noise_multiplier=2.0"])
    plan = client_level_plan(cfg)
    assert plan.sample_rate == 1.0
    rdp = client_level_epsilon(plan, 5, 1e-5)
    acc = pld_privacy_accountant.PLDAccountant()
    acc.compose(dp_event.GaussianDpEvent(plan.noise_multiplier), 5)
    pld = acc.get_epsilon(1e-5)
    assert pld <= rdp <= 1.15 * pld


def test_client_level_config_rules() -> None:
    from fedpriv.errors import ConfigError

    with pytest.raises(ConfigError, match="bfv"):
        load_config(None, ["privacy.mode=client", "encryption.scheme=ckks"])
    with pytest.raises(ConfigError, match="client_clip_norm"):
        load_config(None, ["privacy.mode=both", "privacy.client_clip_norm=0"])


@pytest.mark.parametrize("custody", ["shared", "threshold"])
def test_dealt_keys_round_within_the_clip_norm(custody: str, tmp_path: Path) -> None:
    """Client-level DP keys get a quantization scale whose rounding (sqrt(d)/s) stays within
    the clip norm, under either key custody (clients refuse keys where it does not)."""
    from fedpriv.keys import deal_keys

    n = 6090
    cfg = load_config(
        None,
        [
            "privacy.mode=client",
            "privacy.client_clip_norm=0.05",
            "federation.num_clients=4",
            f"encryption.key_custody={custody}",
        ],
    )
    params = deal_keys(cfg, num_values=n, max_weight=1, out=tmp_path)
    scale = float(params.quant_scale)  # type: ignore[union-attr]
    assert rounding_norm(n, scale) <= cfg.privacy.client_clip_norm
