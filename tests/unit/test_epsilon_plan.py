"""The planned epsilon schedule is exactly what the accountant computes, and primes it."""

from __future__ import annotations

import pytest

import fedpriv.privacy.accounting as accounting
from fedpriv.config import load_config
from fedpriv.privacy.accounting import DpEvent, clear_caches, opacus_epsilon
from fedpriv.privacy.plan import EpsilonPlan, load_or_make_plan, plan_key
from fedpriv.privacy.training import sample_rate, steps_per_round

N = 150  # a client's training examples


def _cfg(*extra: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["rounds=3", "privacy.noise_multiplier=1.3", *extra])


def test_schedule_is_the_accountants_epsilon_after_each_round() -> None:
    cfg = _cfg()
    plan, made = load_or_make_plan(cfg, N)
    assert made and plan.sigma == 1.3 and len(plan.epsilons) == 3
    q, steps = sample_rate(N, cfg.train.batch_size), steps_per_round(N, cfg.train.batch_size, 3)
    assert (plan.sample_rate, plan.steps_per_round) == (q, steps)
    clear_caches()
    for k, eps in enumerate(plan.epsilons, start=1):
        # A client's history after k rounds: k entries of one round each, as the state stores them.
        assert opacus_epsilon([DpEvent(1.3, q, steps)] * k, 1e-5, "prv") == eps
    assert list(plan.epsilons) == sorted(plan.epsilons) and plan.epsilons[0] > 0


def test_primed_schedule_answers_without_recomputing(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg()
    plan, _ = load_or_make_plan(cfg, N)
    stored = plan.to_record()
    clear_caches()
    again, made = load_or_make_plan(cfg, N, stored)
    assert not made and again == plan

    def boom(*_a: object) -> float:
        raise AssertionError("recomputed a planned epsilon")

    monkeypatch.setattr(accounting, "_opacus_epsilon", boom)
    again.prime()
    for k in (1, 2, 3):
        assert opacus_epsilon(plan.history(k), 1e-5, "prv") == plan.epsilons[k - 1]
    with pytest.raises(AssertionError):  # off the plan: computed as before
        opacus_epsilon([DpEvent(1.3, plan.sample_rate, 1)], 1e-5, "prv")


@pytest.mark.parametrize(
    "change",
    [
        {"key": "other"},
        {"sigma": "x"},
        {"sigma": -1.0},
        {"epsilons": [3.0, 2.0, 4.0]},
        {"epsilons": None},
        {"steps-per-round": 0},
    ],
)
def test_a_stored_plan_that_does_not_fit_is_recomputed(change: dict[str, object]) -> None:
    cfg = _cfg()
    plan, _ = load_or_make_plan(cfg, N)
    rec = {**plan.to_record(), **change}
    assert EpsilonPlan.from_record(rec, plan_key(cfg, N)) is None
    fresh, made = load_or_make_plan(cfg, N, rec)
    assert made and fresh.epsilons == plan.epsilons
    # Another run shape needs another plan.
    assert plan_key(_cfg("rounds=4"), N) != plan_key(cfg, N)


def test_memoized_rdp_gives_bit_identical_epsilons() -> None:
    from opacus.accountants import create_accountant
    from opacus.accountants.analysis import rdp

    hist = [DpEvent(0.9, 0.03, 120), DpEvent(1.4, 0.05, 40)]
    clear_caches()
    memo = opacus_epsilon(hist, 1e-5, "prv"), opacus_epsilon(hist, 1e-5, "rdp")
    assert getattr(rdp._compute_rdp, "_fedpriv_memo", False)
    plain = rdp._compute_rdp.__wrapped__  # type: ignore[attr-defined]
    memoized = rdp._compute_rdp
    try:
        rdp._compute_rdp = plain
        ref = []
        for name in ("prv", "rdp"):
            acc = create_accountant(mechanism=name)
            acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in hist]
            ref.append(float(acc.get_epsilon(delta=1e-5)))
    finally:
        rdp._compute_rdp = memoized
    assert memo == tuple(ref)
