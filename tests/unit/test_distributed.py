"""Distributed record-level DP: noise in the BFV sum, DDGauss, accounting, coalitions, catch-up."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from fedpriv.config import load_config
from fedpriv.crypto import Aggregator, KeyHolder, choose_params
from fedpriv.crypto.codec import ClientCodec
from fedpriv.errors import ConfigError, WireError
from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, pld_epsilon
from fedpriv.privacy.distributed import (
    CUSTODY_NONE,
    CUSTODY_SHARED,
    CUSTODY_THRESHOLD,
    DistributedPlan,
    OptimizerState,
    clipped_gradient_sum,
    coalition_epsilons,
    coalition_sigma,
    ddgauss_tau,
    distributed_plan,
    learning_rate,
    max_rounds_within,
    sgd_step,
    share_std_for,
    sigma_effective,
)
from fedpriv.privacy.policy import DevicePolicy
from fedpriv.privacy.rng import InsecureTestRandom, OsRandom
from fedpriv.privacy.state import ClientPrivacyState
from fedpriv.protocol import Instruction, build_instruction, parse_instruction

_DIST = [
    'privacy.mode="distributed"',
    "privacy.noise_multiplier=1.0",
    "privacy.total_records=1000",
    "train.batch_size=100",
    "federation.num_clients=4",
    'encryption.scheme="bfv"',
    "encryption.value_range=8.0",
]


def _cfg(*more: str):  # type: ignore[no-untyped-def]
    return load_config(None, [*_DIST, *more])


# ------------------------------------------------------------------ noise in the encrypted sum


def test_summed_noise_has_the_planned_variance_under_real_bfv() -> None:
    """k_min clients each add a share; the decrypted BFV sum carries sigma * sensitivity."""
    k, d, sigma = 5, 8000, 1.3
    params = choose_params(
        "bfv", num_values=d, max_clients=k, max_weight=1, value_range=64.0, min_quant_scale=2**14
    )
    holder = KeyHolder.generate(params)
    codec = ClientCodec(params, holder)
    plan = DistributedPlan(sigma, 0.1, 1000, 1.0, k, d, float(params.quant_scale), 8.0)
    agg = Aggregator(params)
    for _ in range(k):
        upd = codec.encode(np.zeros(d), 1, plan.share_std_units / codec.quant_scale, OsRandom())
        agg.add(upd.blob)
    out = holder.decrypt(agg.result())
    assert out.count == k and out.total_weight == k
    units = out.weighted_sum * params.quant_scale
    assert np.allclose(units, np.round(units))  # integers: the discrete mechanism, summed exactly
    want = (plan.sigma_effective * plan.sensitivity_units) ** 2  # tau = 0 here
    assert plan.tau < 1e-100 and plan.sigma_effective == pytest.approx(sigma, rel=1e-9)
    var = float(np.var(units))
    # The sample variance of d Gaussian values has relative std sqrt(2/d): 5 of them.
    assert abs(var / want - 1) < 5 * math.sqrt(2 / d), (var, want)
    assert abs(float(np.mean(units))) < 5 * math.sqrt(want / d)
    # one share alone carries 1/k of it: what a coalition that decrypts one update faces
    one = holder.decrypt(
        codec.encode(np.zeros(d), 1, plan.share_std_units / codec.quant_scale).blob
    )
    var1 = float(np.var(one.weighted_sum * params.quant_scale))
    assert abs(var1 / (want / k) - 1) < 5 * math.sqrt(2 / d)


def test_ddgauss_sigma_effective() -> None:
    # Large shares: the sum is a Gaussian of the nominal multiplier.
    assert ddgauss_tau(50.0, 10) == 0.0
    assert sigma_effective(50.0, 10, 100.0, 1000) == pytest.approx(50 * math.sqrt(10) / 100)
    # Shares under one unit: KLS21's tau term lowers the effective multiplier.
    small = sigma_effective(0.4, 10, 1.0, 1000)
    assert small < 0.4 * math.sqrt(10)
    assert ddgauss_tau(0.4, 10) > 0
    # share_std_for inverts it (never below the target, within 1%)
    for target, k, sens, dd in ((1.1, 10, 20.0, 20490), (0.8, 3, 1.5, 5000), (2.0, 100, 3.0, 100)):
        std = share_std_for(target, k, sens, dd)
        eff = sigma_effective(std, k, sens, dd)
        assert target <= eff <= target * 1.011


def test_plan_sensitivity_includes_rounding_and_float32() -> None:
    plan = DistributedPlan(1.0, 0.1, 1000, 1.0, 10, 20490, 2.0**20, 32.0)
    root = math.sqrt(20490)
    assert plan.rounding_norm == pytest.approx(root * 32 * 2**-23 + 1.25 * root / 2**20)
    assert plan.sensitivity_units == pytest.approx(2**20 * (1 + plan.rounding_norm))
    assert plan.expected_batch == pytest.approx(100.0)
    assert plan.share_std_units == pytest.approx(plan.sensitivity_units / math.sqrt(10), rel=1e-9)


def test_plan_for_dealt_keys_and_custody() -> None:
    cfg = _cfg()
    params = choose_params("bfv", 6090, 4, 1, 8.0 + 20.0, min_quant_scale=10_000)
    plan = distributed_plan(cfg, params)
    assert plan.k_min == 4 and plan.sample_rate == pytest.approx(0.1)
    assert plan.custody == CUSTODY_SHARED and plan.decrypt_threshold == 1
    assert plan.quant_scale == params.quant_scale and plan.rounding_norm < 0.02
    cfg3 = _cfg("federation.min_train_clients=3")
    assert distributed_plan(cfg3, params).k_min == 3


# ------------------------------------------------------------------ accounting


def test_distributed_charges_equal_a_central_accountant_and_pld() -> None:
    plan = DistributedPlan(1.1, 0.1, 5000, 1.0, 10, 20490, 2.0**24, 32.0)
    state = ClientPrivacyState("prv", 1e-5)
    for rnd in range(1, 41):
        state = state.with_event(plan.event(), rnd, "run")
    central = [DpEvent(plan.sigma_effective, 0.1, 40)]
    assert [e.as_list() for e in state.run("run").history] == [c.as_list() for c in central]
    eps = state.run_epsilon("run")
    assert eps == opacus_epsilon(central, 1e-5, "prv")
    assert pld_epsilon(central, 1e-5) == pytest.approx(eps, rel=0.02)


def test_coalition_epsilons_are_monotone_and_follow_custody() -> None:
    hist = [DpEvent(1.2, 0.1, 50)]
    central = opacus_epsilon(hist, 1e-5, "prv")
    for custody_t in (0, 1, 4, 10):
        rows = coalition_epsilons(hist, 1e-5, k_min=10, decrypt_threshold=custody_t)
        cs = [c for c, _ in rows]
        eps = [e for _, e in rows]
        assert cs == sorted(cs) and cs[0] == 0 and cs[-1] <= 9
        assert all(b >= a for a, b in itertools.pairwise(eps)), rows
        if custody_t == 0:  # no encryption: even the server alone reads updates
            assert eps[0] > central
        else:
            assert eps[0] == pytest.approx(central)
        for c, e in rows:
            want = coalition_sigma(1.2, 10, c, custody_t)
            assert e == pytest.approx(opacus_epsilon([DpEvent(want, 0.1, 50)], 1e-5, "prv"))
    # threshold T = 4: three colluding clients remove three shares, four read single updates
    assert coalition_sigma(1.0, 10, 3, 4) == pytest.approx(math.sqrt(7 / 10))
    assert coalition_sigma(1.0, 10, 4, 4) == pytest.approx(1 / math.sqrt(10))
    with pytest.raises(Exception, match="coalition size"):
        coalition_sigma(1.0, 10, 10, 4)


def test_custody_names() -> None:
    from fedpriv.crypto.plain import PlainParams
    from fedpriv.privacy.distributed import custody_of

    assert custody_of(PlainParams(10, 3)) == (CUSTODY_NONE, 0)
    assert custody_of(choose_params("bfv", 100, 3, 1, 1.0))[0] == CUSTODY_SHARED

    class _T:  # the threshold parameters' public fields
        scheme, threshold = "bfv", 3

    assert custody_of(_T()) == (CUSTODY_THRESHOLD, 3)


def test_max_rounds_within_budget() -> None:
    ev = DpEvent(1.0, 0.1, 1)
    r = max_rounds_within(ev, 1e-5, 4.0, 200, accountant="rdp")
    assert 0 < r < 200
    assert opacus_epsilon([DpEvent(1.0, 0.1, r)], 1e-5, "rdp") <= 4.0
    assert opacus_epsilon([DpEvent(1.0, 0.1, r + 1)], 1e-5, "rdp") > 4.0
    assert max_rounds_within(ev, 1e-5, 100.0, 20) == 20


# ------------------------------------------------------------------ the step


def test_clipped_gradient_sum_matches_a_per_example_reference() -> None:
    import torch

    from fedpriv.models import build_model

    torch.manual_seed(0)
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    x = np.random.default_rng(0).normal(size=(37, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 10, 37)
    got, clipped, _ = clipped_gradient_sum(model, x, y, 0.5, chunk=16)
    want = np.zeros_like(got)
    n_clipped = 0
    for i in range(len(y)):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.tensor(x[i : i + 1])), torch.tensor(y[i : i + 1])
        )
        loss.backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        norm = np.linalg.norm(g)
        n_clipped += int(norm > 0.5)
        want += g * min(1.0, 0.5 / (norm + 1e-6))
    assert np.allclose(got, want, atol=1e-5)
    assert clipped == n_clipped
    empty, c0, _ = clipped_gradient_sum(model, x[:0], y[:0], 0.5)
    assert not empty.any() and c0 == 0


def test_sgd_step_is_torch_sgd_with_momentum_and_cosine() -> None:
    import torch

    train = load_config(
        None, ["train.learning_rate=0.3", "train.momentum=0.9", 'train.lr_schedule="cosine"']
    ).train
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=50)
    grads = [rng.normal(size=50) for _ in range(4)]
    st = OptimizerState(w0.copy(), np.zeros(50), 0)
    p = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([p], lr=0.3, momentum=0.9)
    for t, g in enumerate(grads, 1):
        sgd_step(st, g, train, t, 10)
        for group in opt.param_groups:
            group["lr"] = learning_rate(train, t, 10)
        p.grad = torch.tensor(g)
        opt.step()
    assert np.allclose(st.params, p.detach().numpy(), atol=1e-12)
    assert learning_rate(train, 1, 10) == pytest.approx(0.3)
    assert learning_rate(train, 6, 10) == pytest.approx(0.15)


# ------------------------------------------------------------------ config, policy, protocol


def test_config_rules_for_distributed() -> None:
    with pytest.raises(ConfigError, match="bfv"):
        _cfg('encryption.scheme="ckks"')
    with pytest.raises(ConfigError, match="fraction_train"):
        _cfg("federation.fraction_train=0.5")
    with pytest.raises(ConfigError, match="batch_size"):
        _cfg("train.batch_size=2000")
    with pytest.raises(ConfigError, match=r"distributed DP runs with encryption\.key_custody"):
        _cfg('encryption.key_custody="threshold"')
    cfg = _cfg()
    assert cfg.distributed_dp and cfg.record_level and not cfg.record_dp


def test_device_policy_covers_the_mode() -> None:
    cfg = _cfg()
    pol = DevicePolicy.from_config(cfg)
    assert pol.review(cfg, 1.0) == []
    assert pol.limits(cfg).k_min == 4  # every client, by default
    strict = pol.tighten(min_sigma_effective=1.5)
    assert any("effective noise multiplier" in v for v in strict.review(cfg, 1.0))
    k8 = pol.tighten(min_clients_per_aggregate=8)
    assert any("noise shares" in v for v in k8.review(cfg, 1.0))
    no = DevicePolicy()  # a deployment default does not take part in distributed runs
    assert any("not allowed" in v for v in no.review(cfg, 1.0))
    assert DevicePolicy.from_dict({"min_sigma_effective": 0.9}).min_sigma_effective == 0.9


def test_instruction_carries_aggregates() -> None:
    ins = Instruction(5, "{}", "f" * 64, None, "run", ((2, b"ab"), (4, b"cd")), 4)
    back = parse_instruction(build_instruction(ins), max_blob_bytes=100)
    assert back.aggregates == ((2, b"ab"), (4, b"cd")) and back.latest_aggregate == 4
    plain = parse_instruction(
        build_instruction(dataclasses.replace(ins, aggregates=(), latest_aggregate=0)),
        max_blob_bytes=100,
    )
    assert plain.aggregates == () and plain.latest_aggregate == 0
    for bad in (
        Instruction(5, "{}", "f" * 64, None, "run", ((5, b"x"),), 5),  # not an earlier round
        Instruction(5, "{}", "f" * 64, None, "run", ((3, b"x"),), 2),  # after the latest
    ):
        with pytest.raises(WireError):
            parse_instruction(build_instruction(bad), max_blob_bytes=100)


# ------------------------------------------------------------------ catching up, short rounds


@pytest.fixture(scope="module")
def dealt(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fedpriv.keys import deal_keys

    cfg = _cfg("federation.num_clients=3", "federation.min_train_clients=3")
    out = tmp_path_factory.mktemp("keys")
    deal_keys(cfg, num_values=6090, max_weight=1, out=out)
    return cfg, ClientCodec.load(out / "client")


def _round(cfg, state, rnd, aggs):  # type: ignore[no-untyped-def]
    from fedpriv.apps.client import _Round
    from fedpriv.protocol import request_json

    latest = max((r for r, _ in aggs), default=0)
    ins = Instruction(rnd, request_json(cfg), "f" * 64, None, "run", tuple(aggs), latest)
    return _Round(ins, cfg, "client-0", 1, InsecureTestRandom(0), state, {})


def _aggregate(codec: ClientCodec, n: int, plan: DistributedPlan, value: float) -> bytes:
    from fedpriv.crypto.codec import open_aggregator

    agg = open_aggregator(codec.params)
    for i in range(n):
        vals = np.full(plan.num_values, value)
        agg.add(
            codec.encode(
                vals, 1, plan.share_std_units / codec.quant_scale, InsecureTestRandom(i)
            ).blob
        )
    return agg.result()


def test_a_round_below_k_min_is_not_trained_from(dealt) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.apps.distributed_client import _catch_up, plan_for

    cfg, codec = dealt
    plan = plan_for(cfg, codec)
    assert plan.k_min == 3
    full, short = _aggregate(codec, 3, plan, 0.5), _aggregate(codec, 2, plan, 0.5)
    w0 = np.zeros(plan.num_values)
    state = ClientPrivacyState("prv", 1e-5).with_event(plan.event(), 1, "run")
    state = state.with_event(plan.event(), 2, "run")
    # round 1's aggregate sums 3 updates: applied; round 2's sums 2: discarded
    st = OptimizerState(w0.copy(), np.zeros_like(w0), 0)
    r = _round(cfg, state, 3, [(1, full), (2, short)])
    discarded = _catch_up(r, plan, codec, st, plan.k_min)
    assert [d["round"] for d in discarded] == [2] and discarded[0]["count"] == 2
    assert st.applied_round == 2
    after_one = OptimizerState(w0.copy(), np.zeros_like(w0), 0)
    _catch_up(_round(cfg, state, 2, [(1, full)]), plan, codec, after_one, plan.k_min)
    assert np.array_equal(st.params, after_one.params)  # nothing was learnt from round 2
    assert not np.array_equal(after_one.params, w0)
    # This device contributed to round 2, so the short release is charged at its real noise.
    hist = r.state.run("run").history
    short_sigma = plan.sigma_effective * math.sqrt(2 / 3)
    assert [e.noise_multiplier for e in hist] == [plan.sigma_effective, short_sigma]
    assert r.state.run_epsilon("run") > state.run_epsilon("run")
    # a device that did not contribute to round 2 is not charged for it
    r2 = _round(
        cfg, ClientPrivacyState("prv", 1e-5).with_event(plan.event(), 1, "run"), 3, [(2, short)]
    )
    _catch_up(r2, plan, codec, OptimizerState(w0.copy(), np.zeros_like(w0), 1), plan.k_min)
    assert len(r2.state.run("run").history) == 1


def test_catch_up_is_idempotent_and_ordered(dealt) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.apps.distributed_client import _catch_up, plan_for

    cfg, codec = dealt
    plan = plan_for(cfg, codec)
    blobs = [(i, _aggregate(codec, 3, plan, 0.1 * i)) for i in (1, 2, 3)]
    w0 = np.zeros(plan.num_values)
    state = ClientPrivacyState("prv", 1e-5)
    a = OptimizerState(w0.copy(), np.zeros_like(w0), 0)
    _catch_up(_round(cfg, state, 4, blobs), plan, codec, a, 3)
    b = OptimizerState(w0.copy(), np.zeros_like(w0), 0)
    _catch_up(_round(cfg, state, 2, blobs[:1]), plan, codec, b, 3)
    _catch_up(_round(cfg, state, 4, blobs), plan, codec, b, 3)  # round 1 again: skipped
    assert a.applied_round == b.applied_round == 3
    assert np.array_equal(a.params, b.params) and a.digest() == b.digest()
    with pytest.raises(WireError):  # an aggregate of the current round is not applied
        _catch_up(
            _round(cfg, state, 3, blobs), plan, codec, OptimizerState(w0.copy(), w0.copy(), 0), 3
        )


def test_model_state_roundtrip_and_binding(tmp_path: Path) -> None:
    from fedpriv.errors import StateError

    st = OptimizerState(np.arange(5.0), np.ones(5), 7)
    back = OptimizerState.from_arrays(st.to_arrays(), 5)
    assert back.applied_round == 7 and np.array_equal(back.params, st.params)
    with pytest.raises(StateError):
        OptimizerState.from_arrays(st.to_arrays(), 6)
    bad = st.to_arrays()
    bad["params"] = np.array([np.nan] * 5)
    with pytest.raises(StateError):
        OptimizerState.from_arrays(bad, 5)


def test_server_sends_each_client_the_aggregates_it_has_not_applied() -> None:
    from fedpriv.crypto.plain import PlainParams
    from fedpriv.privacy.ledger import RECORD_FORMAT, make_record
    from fedpriv.protocol import MAX_AGGREGATES
    from fedpriv.strategy.distributed import DistributedFedAvg

    stored = {r: f"agg{r}".encode() for r in range(1, 71)}
    s = DistributedFedAvg(
        PlainParams(10, 3),
        "{}",
        num_clients=3,
        seed=0,
        run_id="run",
        load_aggregate=stored.get,
        aggregate_rounds=[r for r in stored if r != 5],  # round 5 produced no aggregate
    )
    assert s.latest_aggregate == 70
    # a client the server has not heard from gets the most recent ones
    unknown = s._pending(node=11)
    assert [r for r, _ in unknown] == list(range(7, 71)) and len(unknown) == MAX_AGGREGATES
    # its signed record names the last round it applied: from then on it gets what follows
    rec, _ = make_record(
        RECORD_FORMAT,
        {"run_id": "run", "round": 71, "client_id": "client-0", "node_id": 11, "applied_round": 3},
    )
    s._check_record(RECORD_FORMAT, rec, b"", "client-0", 11, 71)
    pending = s._pending(node=11)
    assert [r for r, _ in pending][:3] == [4, 6, 7] and len(pending) == MAX_AGGREGATES
    assert dict(pending)[4] == b"agg4"
    # a claim beyond what exists is capped; an up-to-date client gets nothing
    rec, _ = make_record(
        RECORD_FORMAT,
        {"run_id": "run", "round": 71, "client_id": "client-0", "node_id": 11, "applied_round": 99},
    )
    s._check_record(RECORD_FORMAT, rec, b"", "client-0", 11, 71)
    assert s._pending(node=11) == ()
