"""DP randomness comes from the device's OS CSPRNG: nothing in the config predicts it (issue 10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedpriv.config import load_config
from fedpriv.data import client_datasets, load_dataset
from fedpriv.models import build_model
from fedpriv.privacy.rng import RNG_OS, RNG_TEST, InsecureTestRandom, OsRandom, dp_random
from fedpriv.privacy.training import train_local

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_os_uniforms_and_masks() -> None:
    r = OsRandom()
    u = r.uniform(100_000)
    assert u.min() > 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    m = r.bernoulli_mask(100_000, 0.1)
    assert abs(m.mean() - 0.1) < 0.005
    assert r.private and r.name == RNG_OS


def test_torch_generator_state_is_filled_from_the_os() -> None:
    """Every generator gets a fresh full MT19937 state (not a 64-bit seed): no two agree, and
    the state words are not those of any small manual seed."""
    gens = [OsRandom().torch_generator() for _ in range(3)]
    draws = [torch.normal(0.0, 1.0, (8,), generator=g) for g in gens]
    assert not torch.equal(draws[0], draws[1]) and not torch.equal(draws[1], draws[2])
    state = gens[0].get_state().numpy()
    words = np.frombuffer(state[24 : 24 + 8 * 624].tobytes(), dtype=np.uint64)
    assert words.max() < 2**32 and len(set(words.tolist())) > 600
    seeded = torch.Generator().manual_seed(0).get_state().numpy()
    assert not np.array_equal(state[24:5016], seeded[24:5016])


def test_test_seed_is_reproducible_per_label_and_never_private() -> None:
    a, b = dp_random(7, "client-1", 3), dp_random(7, "client-1", 3)
    assert isinstance(a, InsecureTestRandom) and not a.private and a.name == RNG_TEST
    assert np.array_equal(a.uniform(5), b.uniform(5))
    assert not np.array_equal(
        dp_random(7, "client-1", 3).uniform(5), dp_random(7, "client-2", 3).uniform(5)
    )
    assert not np.array_equal(
        dp_random(7, "client-1", 3).uniform(5), dp_random(7, "client-1", 4).uniform(5)
    )
    assert isinstance(dp_random(None, "client-1", 3), OsRandom)


def test_poisson_batches_cannot_be_recomputed_from_the_config() -> None:
    """The attack of issue 10: recompute a client's batches from config.json. Before, the loader's
    generator was seeded from (seed, partition, round) and every batch matched; now the batches
    are drawn from the CSPRNG: the recomputation matches none, and two runs differ."""
    from opacus.utils.uniform_sampler import UniformWithReplacementSampler

    cfg = load_config(None, ["train.model=logreg", "train.local_epochs=1"])
    train, _ = load_dataset("digits", holdout_fraction=0.2, seed=0)
    data, _ = client_datasets(
        train,
        0,
        10,
        partitioner="iid",
        alpha=0.5,
        classes_per_partition=2,
        test_fraction=0.2,
        seed=0,
    )

    def run() -> tuple[tuple[int, ...], ...]:
        model = build_model("logreg", data.input_shape, data.num_classes, seed=0)
        res = train_local(
            model,
            data,
            train=cfg.train,
            privacy=cfg.privacy,
            noise_multiplier=1.0,
            rng=OsRandom(),
            keep_batches=True,
        )
        return res.batches

    first, second = run(), run()
    assert len(first) == len(second) > 2
    assert first != second
    # the old, config-derived recipe (fedpriv <= this change): generator seeded from public data
    steps = len(first)
    for rnd in (1, 2, 3):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 0 * 1009 + rnd)
        sampler = UniformWithReplacementSampler(
            num_samples=len(data), sample_rate=1 / steps, generator=gen
        )
        predicted = tuple(tuple(b) for b in sampler)
        assert sum(p == a for p, a in zip(predicted, first, strict=True)) <= 1


def test_stochastic_rounding_draws_from_the_given_randomness() -> None:
    from fedpriv.crypto.core import stochastic_round

    v = np.full(10_000, 0.25)
    out = stochastic_round(v, OsRandom().uniform(v.size))
    assert set(np.unique(out).tolist()) <= {0, 1} and abs(out.mean() - 0.25) < 0.02
    a = stochastic_round(v, InsecureTestRandom(1).uniform(v.size))
    b = stochastic_round(v, InsecureTestRandom(1).uniform(v.size))
    assert np.array_equal(a, b)
