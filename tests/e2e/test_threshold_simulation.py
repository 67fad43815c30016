"""Threshold custody on Flower's simulation engine (Ray), with real Opacus and SEAL.

* the same run under shared and threshold custody reaches the same models (the decrypted
  aggregates differ by the quantisation bounds only) and accuracy;
* a share holder that drops out of the decryption is replaced by a new participant set, down to
  exactly T responders;
* below T the round fails cleanly: recorded, the previous global model stays, the run stops,
  and every client was charged for the round once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedpriv.apps import ClientSettings
from fedpriv.apps.faults import Fault, make_faulty_client_app
from fedpriv.config import load_config
from fedpriv.crypto.codec import ClientCodec
from fedpriv.errors import RunFailedError
from fedpriv.privacy import ClientPrivacyState, read_chain, verify_chain
from fedpriv.privacy.policy import DevicePolicy
from fedpriv.simulation import simulate
from fedpriv.strategy import EncryptedFedAvg

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]

BASE = [
    "federation.num_clients=4",
    "train.model=logreg",
    "train.local_epochs=1",
    "privacy.noise_multiplier=1.0",
    "data.partitioner=iid",
    "federation.round_timeout_s=300",  # round 1 starts Ray actors: minutes on a loaded machine
]
THRESHOLD = ["encryption.key_custody=threshold"]  # T = 3 of 4 (a majority)


class PreferClients(EncryptedFedAvg):
    """Asks the clients in ``first`` before the others (so a dropout is always exercised)."""

    first: tuple[str, ...] = ("client-1", "client-2")

    def _share_holders(self, accepted: list[Any], online: set[int]) -> list[tuple[int, str]]:
        pool = super()._share_holders(accepted, online)
        return sorted(pool, key=lambda m: m[1] not in self.first)


def _faulty(run: Path, cfg: Any, *faults: Fault) -> Any:
    settings = ClientSettings(
        (run / "keys" / "client").resolve(),
        (run / "clients").resolve(),
        policy=DevicePolicy.from_config(cfg),
        insecure_test_seed=5,
    )
    return make_faulty_client_app(settings, faults)


def test_threshold_custody_matches_shared_custody(tmp_path: Path) -> None:
    base = [*BASE, "rounds=3", "name=custody"]
    shared = simulate(load_config(None, base), tmp_path / "shared", insecure_test_seed=7)
    thr = simulate(load_config(None, [*base, *THRESHOLD]), tmp_path / "thr", insecure_test_seed=7)
    a, b = shared.final_accuracy, thr.final_accuracy
    assert a is not None and b is not None and a > 0.5
    assert abs(a - b) <= 0.03, (a, b)
    # Round 1 starts from the same model and, with the same DP randomness, every client's update
    # is the same float32 vector: the decrypted aggregates differ by quantisation only.
    sc = ClientCodec.load(tmp_path / "shared" / "keys" / "client")
    tc = ClientCodec.load(tmp_path / "thr" / "keys" / "client")
    ma, wa, na = sc.decode((tmp_path / "shared" / "globals" / "round_001.bin").read_bytes())
    mb, wb, nb = tc.decode((tmp_path / "thr" / "globals" / "round_001.bin").read_bytes())
    assert (wa, na) == (wb, nb) and na == 4
    bound = sc.params.error_bound(int(wa), na) + tc.params.error_bound(int(wb), nb)  # type: ignore[attr-defined]
    assert float(np.abs(ma - mb).max()) <= bound
    m = thr.metrics
    assert m["key_custody"] == "threshold" and m["threshold"]["threshold"] == 3
    for r in m["rounds"]:
        d = r["decryption"]
        assert d["status"] == "decrypted" and d["requests"] == 1 and len(d["participants"]) == 3
        # clients download the combined decryption (one polynomial at b bits), T of them the
        # aggregate; a partial is one polynomial at b bits
        assert r["global_bytes"] == d["combined_bytes"] < d["aggregate_bytes"]
        assert d["partial_bytes"] == d["combined_bytes"] + 2  # + the sender's index
    verify_chain(read_chain(tmp_path / "thr" / "decryption.jsonl"))
    report = json.loads((tmp_path / "thr" / "privacy_report.json").read_text())
    enc = report["encryption"]
    assert enc["custody"] == "threshold" and enc["threshold"]["decryption_requests"] == 3
    assert enc["threshold"]["rounds_decrypted"] == 3 and enc["threshold"]["masked"] is True
    assert any("3 share holders" in k["party"] for k in enc["key_custody"])


def test_a_dropout_down_to_the_threshold_still_decrypts(tmp_path: Path) -> None:
    run = tmp_path / "drop"
    cfg = load_config(None, [*BASE, *THRESHOLD, "rounds=2", "name=tdrop"])
    app = _faulty(run, cfg, Fault("client-1", 2, "crash-on-decrypt"))
    res = simulate(cfg, run, client_app=app, strategy_class=PreferClients)
    r2 = res.metrics["rounds"][1]["decryption"]
    assert r2["status"] == "decrypted" and r2["requests"] == 2
    first, second = r2["attempts"]
    assert "client-1" in first and "client-1" not in second and len(second) == 3
    assert r2["participants"] == second
    assert r2["replies"]["0:client-1"]["status"] == "failed"
    assert res.final_accuracy is not None and len(res.metrics["rounds"]) == 2
    # The retry cost no epsilon: each client was charged once per round it trained.
    ledger = read_chain(run / "privacy_ledger.jsonl")
    assert sorted((e["client_id"], e["round"]) for e in ledger) == sorted(
        (f"client-{i}", r) for i in range(4) for r in (1, 2)
    )


def test_below_the_threshold_the_round_fails_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "fail"
    cfg = load_config(None, [*BASE, *THRESHOLD, "rounds=3", "name=tfail"])
    faults = (Fault("client-1", 2, "crash-on-decrypt"), Fault("client-2", 2, "crash-on-decrypt"))
    with pytest.raises(RunFailedError, match=r"round 2: decryption failed: 2 share holder"):
        simulate(cfg, run, client_app=_faulty(run, cfg, *faults), strategy_class=PreferClients)
    m = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    d = m["rounds"][1]["decryption"]
    assert d["status"] == "failed" and "the threshold is 3" in d["reason"]
    assert "previous global model stays" in d["reason"] and d["requests"] == 1
    # The previous global model stays: round 2 has an aggregate but no global model.
    assert (run / "globals" / "round_001.bin").exists()
    assert (run / "globals" / "round_002.aggregate.bin").exists()
    assert not (run / "globals" / "round_002.bin").exists()
    ckpt = json.loads((run / "checkpoint.json").read_text())
    assert ckpt["round"] == 1
    # Every client trained round 2 once and was charged once; nothing was retrained.
    for i in range(4):
        s = ClientPrivacyState.from_json(
            (run / "clients" / f"client-{i}" / "privacy_state.json").read_text()
        )
        (rs,) = s.runs
        assert rs.rounds_trained == (1, 2)
    journal = read_chain(run / "decryption.jsonl")
    r2 = [e for e in journal if e["round"] == 2]
    assert {e["client_id"] for e in r2 if e["status"] == "failed"} >= {"client-1", "client-2"}
