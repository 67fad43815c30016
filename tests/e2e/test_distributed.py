"""Distributed record-level DP end to end: real Flower simulation engine, Opacus, BFV."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpriv.apps.faults import Fault, make_faulty_client_app
from fedpriv.config import load_config
from fedpriv.privacy import DpEvent, opacus_epsilon, pld_epsilon, read_chain, verify_chain
from fedpriv.simulation import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]

_BASE = [
    'data.dataset="digits"',
    'data.partitioner="iid"',
    "federation.num_clients=3",
    "federation.fraction_evaluate=0.0",
    'train.model="cnn"',
    "train.batch_size=200",
    "train.learning_rate=2.0",
    "train.momentum=0.5",
    'train.lr_schedule="cosine"',
    'privacy.mode="distributed"',
    # A fixed sigma keeps planning (seconds of PRV bisection per process) out of CI.
    "privacy.noise_multiplier=0.8",
    "privacy.max_epsilon=10.0",
    'encryption.scheme="bfv"',
    "encryption.value_range=16.0",
]


def _records(run: Path) -> list[dict]:
    entries = read_chain(run / "privacy_ledger.jsonl")
    verify_chain(entries)
    return entries


def test_short_distributed_run_learns_and_accounts_centrally(tmp_path: Path) -> None:
    cfg = load_config(None, [*_BASE, "rounds=6", 'name="dist-e2e"'])
    res = simulate(cfg, tmp_path / "run", insecure_test_seed=7)
    m = res.metrics
    plan = m["distributed"]
    assert m["privacy_mode"] == "distributed" and plan["k_min"] == 3
    assert plan["total_records"] == sum(m["partition_sizes"])  # N: filled in by the runner
    assert plan["sample_rate"] == pytest.approx(200 / plan["total_records"])
    assert plan["sigma_effective"] >= 0.8 and plan["rounding_norm"] < 0.02
    # It learns: from chance to well above it in six DP-SGD steps.
    assert m["initial_heldout_accuracy"] < 0.25
    assert res.final_accuracy is not None and res.final_accuracy > 0.5, m["rounds"]
    # Every client holds the model the key holder replays (same bits, same digest).
    rep = m["distributed_replay"]
    assert rep["mismatches"] == [] and rep["records_checked"] == 3 * 5
    # The accounting is the central accountant over (sigma_effective, q, steps), and PLD agrees.
    ledger = _records(res.run_dir)
    assert len(ledger) == 18
    q, s = plan["sample_rate"], plan["sigma_effective"]
    for e in ledger:
        doc = json.loads(e["client_record"])
        assert doc["status"] == "trained" and doc["event"] == [s, q, 1]
        central = [DpEvent(s, q, e["round"])]
        assert [DpEvent.from_any(h) for h in e["history"]] == central
        assert e["epsilon"] == opacus_epsilon(central, 1e-5, "prv")
    final = [DpEvent(s, q, 6)]
    assert pld_epsilon(final, 1e-5) == pytest.approx(ledger[-1]["epsilon"], rel=0.02)
    # The report states the coalition epsilons, monotone in the coalition size.
    report = json.loads((res.run_dir / "privacy_report.json").read_text())
    dist = report["accounting"]["distributed"]
    eps = [row["epsilon"] for row in dist["coalitions"]]
    assert dist["coalitions"][0]["clients"] == 0 and eps == sorted(eps)
    assert eps[0] == pytest.approx(ledger[-1]["epsilon"])
    assert dist["custody"] == "shared-key" and dist["decrypt_threshold"] == 1
    # What left a device: the encrypted noisy sum; batch size, loss and clip counts are hidden.
    for r in m["rounds"]:
        for c in r["clients"].values():
            assert c["num_examples"] is None and c["train_loss"] == 0.0


@pytest.mark.slow
def test_a_client_that_missed_rounds_catches_up(tmp_path: Path) -> None:
    """client-1 crashes in round 2 (and loses its update in round 3); with k_min = 2 the rounds
    go on, and in round 4 it applies the aggregates it missed: the same model as everyone."""
    from fedpriv.apps.client import ClientSettings
    from fedpriv.privacy.policy import DevicePolicy

    # A lost message costs a round timeout, not the whole test's (the rounds go on with k_min 2).
    more = ["rounds=5", "federation.min_train_clients=2", "federation.round_timeout_s=240"]
    cfg = load_config(None, [*_BASE, *more])
    run = tmp_path / "run"
    app = make_faulty_client_app(
        ClientSettings(
            (run / "keys" / "client").resolve(),
            (run / "clients").resolve(),
            policy=DevicePolicy.from_config(cfg),
        ),
        (Fault("client-1", 2, "crash-before-train"), Fault("client-1", 3, "lose-update")),
    )
    res = simulate(cfg, run, client_app=app)
    rep = res.metrics["distributed_replay"]
    assert rep["mismatches"] == [] and rep["discarded_rounds"] == []
    recs = [json.loads(e["client_record"]) for e in _records(run) if e["client_id"] == "client-1"]
    by_round = {d["round"]: d for d in recs}
    assert 2 not in by_round and 3 not in by_round  # no reply reached the server
    assert by_round[4]["applied_round"] == 3 and by_round[4]["status"] == "trained"
    # its lost round-3 update was still charged: rounds 1, 3 and 4
    hist = [DpEvent.from_any(h) for h in by_round[4]["history"]]
    assert sum(e.steps for e in hist) == 3
