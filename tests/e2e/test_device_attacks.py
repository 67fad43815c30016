"""Attacks on the devices' privacy, carried out on Flower's real simulation engine (issue 10).

Each test plays the attacker for real (an adversarial server strategy, or an adversarial
ClientApp next to honest ones, through Ray with real Opacus and BFV) and fails if the attack
succeeds:

* a server that sends a fixed ``privacy.noise_seed`` (known noise => epsilon void);
* a server that asks for the devices' policy section, or weaker privacy than they allow;
* a server that hands clients one client's update as the "aggregate" (count 1 < k_min);
* a registered node that resends another client's signed update in the same round;
* a forged evaluation reply (n = 10^12, accuracy 1, loss NaN) and an out-of-range signed one;
* predicting a client's DP randomness from the config: two runs of one config differ.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpriv.apps.client import ClientSettings, _client_id, handle_evaluate, handle_train
from fedpriv.config import load_config
from fedpriv.crypto.codec import ClientCodec
from fedpriv.privacy import read_chain
from fedpriv.privacy.policy import DevicePolicy
from fedpriv.protocol import (
    EvalReply,
    build_eval_reply,
    build_train_reply,
    parse_train_reply,
)
from fedpriv.simulation import simulate
from fedpriv.strategy import EncryptedFedAvg

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]

SMALL = [
    "rounds=2",
    "federation.num_clients=3",
    "train.model=logreg",
    "privacy.noise_multiplier=1.0",
    "federation.round_timeout_s=300",  # round 1 starts Ray actors: minutes on a loaded machine
]


def _settings(run: Path, cfg: Any) -> ClientSettings:
    return ClientSettings(
        (run / "keys" / "client").resolve(),
        (run / "clients").resolve(),
        policy=DevicePolicy.from_config(cfg),
    )


def _ledger(run: Path) -> list[dict[str, Any]]:
    return read_chain(run / "privacy_ledger.jsonl")


class SeedSettingServer(EncryptedFedAvg):
    """Asks every client for a fixed noise seed (and, for good measure, a looser budget)."""

    def _instruction(self, server_round: int) -> Any:
        ins = super()._instruction(server_round)
        doc = json.loads(ins.config_json)
        doc["privacy"]["noise_seed"] = 42
        return type(ins)(
            ins.server_round, json.dumps(doc), ins.params_fingerprint, ins.global_blob, ins.run_id
        )


class PolicyRewritingServer(EncryptedFedAvg):
    """Sends the devices a [device] section of its own and asks for more delta."""

    def _instruction(self, server_round: int) -> Any:
        ins = super()._instruction(server_round)
        doc = json.loads(ins.config_json)
        doc["privacy"]["delta"] = 1e-2
        return type(ins)(
            ins.server_round, json.dumps(doc), ins.params_fingerprint, ins.global_blob, ins.run_id
        )


def test_server_set_noise_seed_is_refused_and_recorded(tmp_path: Path) -> None:
    cfg = load_config(None, [*SMALL, "name=seed"])
    res = simulate(cfg, tmp_path / "seed", strategy_class=SeedSettingServer)
    assert "every sampled client refused" in res.metrics["stop_reason"]
    ledger = _ledger(tmp_path / "seed")
    assert {e["client_id"] for e in ledger} == {"client-0", "client-1", "client-2"}
    for e in ledger:
        rec = json.loads(e["client_record"])
        assert rec["status"] == "refused" and rec["event"] is None
        assert "noise_seed" in rec["reason"] and "CSPRNG" in rec["reason"]
    assert not (tmp_path / "seed" / "globals" / "round_001.bin").exists()


def test_weaker_delta_than_the_device_allows_is_refused(tmp_path: Path) -> None:
    cfg = load_config(None, [*SMALL, "name=delta"])
    res = simulate(cfg, tmp_path / "delta", strategy_class=PolicyRewritingServer)
    assert res.final_accuracy is None
    for e in _ledger(tmp_path / "delta"):
        assert e["status"] == "refused" and "privacy.delta" in e["reason"]


class SingleUpdateServer(EncryptedFedAvg):
    """After round 1, hands out one client's own update as the 'global model'."""

    first_update: bytes | None = None

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        for msg in replies:
            if not msg.has_error() and "update" in msg.content.array_records:
                r = parse_train_reply(msg, max_blob_bytes=1 << 30)
                type(self).first_update = r.blob
                break
        out = super().aggregate_train(server_round, replies)
        if server_round == 1 and type(self).first_update is not None:
            self.global_blob = type(self).first_update  # count slot = 1
        return out


def test_a_single_update_posing_as_the_aggregate_is_not_trained_from(tmp_path: Path) -> None:
    cfg = load_config(None, [*SMALL, "name=single"])
    res = simulate(cfg, tmp_path / "single", strategy_class=SingleUpdateServer)
    assert "sums 1 update(s)" in res.metrics["stop_reason"]
    r2 = [e for e in _ledger(tmp_path / "single") if e["round"] == 2]
    assert len(r2) == 3
    for e in r2:
        assert e["status"] == "refused" and not e["trained"]
        assert "sums 1 update(s)" in e["reason"] and "at least 2" in e["reason"]
    # no client spent epsilon in round 2
    r1 = {e["client_id"]: e["epsilon"] for e in _ledger(tmp_path / "single") if e["round"] == 1}
    assert all(math.isclose(e["epsilon"], r1[e["client_id"]]) for e in r2)


def _replaying_app(settings: ClientSettings, drop: Path) -> ClientApp:
    """Every client trains honestly and leaves a copy of its reply in ``drop``; client-2 then
    sends client-0's signed update (same round) instead of its own."""
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        reply = handle_train(msg, context, settings)
        cid = _client_id(context)
        rnd = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        r = parse_train_reply(reply, max_blob_bytes=1 << 30)
        blob_hex = r.blob.hex() if r.blob is not None else None
        doc = {"metrics": r.metrics, "blob": blob_hex, "record": r.record, "sig": r.signature.hex()}
        (drop / f"{cid}-{rnd}.json").write_text(json.dumps(doc))
        if cid != "client-2":
            return reply
        victim = drop / f"client-0-{rnd}.json"
        deadline = time.monotonic() + 60
        while not victim.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        v = json.loads(victim.read_text())
        from fedpriv.protocol import TrainReply

        stolen = TrainReply(
            v["metrics"],
            bytes.fromhex(v["blob"]),
            "",
            "client-0",
            v["record"],
            bytes.fromhex(v["sig"]),
        )
        return Message(build_train_reply(stolen), reply_to=msg)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, settings)

    return app


def test_cross_client_replay_is_not_summed_twice(tmp_path: Path) -> None:
    run, drop = tmp_path / "replay", tmp_path / "drop"
    drop.mkdir()
    cfg = load_config(None, [*SMALL, "name=replay", "rounds=1"])
    res = simulate(cfg, run, client_app=_replaying_app(_settings(run, cfg), drop))
    r1 = res.metrics["rounds"][0]
    assert r1["accepted"] == 2
    assert r1["clients"]["client-0"]["status"] == "accepted"
    replayed = [c for c in r1["clients"].values() if c["status"] == "rejected"]
    assert len(replayed) == 1 and "node" in replayed[0]["reason"]
    codec = ClientCodec.load(run / "keys" / "client")
    _, _, count = codec.decode((run / "globals" / "round_001.bin").read_bytes())
    assert count == 2


def _forging_evaluator(settings: ClientSettings, *, signed: bool) -> ClientApp:
    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, settings)

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        honest = handle_evaluate(msg, context, settings)
        if _client_id(context) != "client-1":
            return honest
        if signed:
            # a registered client signs absurd numbers itself: range checks must stop them
            from fedpriv.apps.client import _identity
            from fedpriv.crypto.identity import sign_record
            from fedpriv.privacy.ledger import EVAL_FORMAT, make_record

            cfg = msg.content.config_records["config"]
            fields = {
                "run_id": cfg["run-id"],
                "round": cfg["server-round"],
                "client_id": "client-1",
                "node_id": int(context.node_id),
                "status": "evaluated",
                "reason": "",
                "num_examples": 10**12,
                "loss": 0.0,
                "accuracy": 1.0,
            }
            record, digest = make_record(EVAL_FORMAT, fields)
            sig = sign_record(_identity(settings, context), digest)
            forged = EvalReply(10**12, 0.0, 1.0, "client-1", record, sig)
        else:
            forged = EvalReply(10**12, math.nan, 1.0, "client-1", "{}", b"")
        return Message(build_eval_reply(forged), reply_to=msg)

    return app


@pytest.mark.parametrize("signed", [False, True])
def test_forged_evaluation_reply_does_not_move_federated_accuracy(
    tmp_path: Path, signed: bool
) -> None:
    run = tmp_path / f"eval-{signed}"
    cfg = load_config(None, [*SMALL, "name=evalforge", "rounds=1"])
    res = simulate(cfg, run, client_app=_forging_evaluator(_settings(run, cfg), signed=signed))
    r1 = res.metrics["rounds"][0]
    assert r1["federated_accuracy"] is not None and r1["federated_accuracy"] < 0.99
    (ev,) = [v for v in r1["evaluations"].values() if v["status"] != "evaluated"]
    assert ev["status"] == "rejected" and ev["reason"]
    honest = [v for v in r1["evaluations"].values() if v["status"] == "evaluated"]
    assert len(honest) == 2
    n = sum(v["num_examples"] for v in honest)
    expected = sum(v["accuracy"] * v["num_examples"] for v in honest) / n
    assert r1["federated_accuracy"] == pytest.approx(expected)
    # the forged reply is in the egress record like any other message
    egress = read_chain(run / "egress.jsonl")
    assert sum(e["message"] == "eval-reply" and e["part"] == "metrics" for e in egress) == 3


def test_two_runs_of_one_config_draw_different_noise(tmp_path: Path) -> None:
    """Nothing in the config predicts the devices' DP randomness: the same config twice gives
    different aggregates (Poisson batches, noise and rounding all differ)."""
    cfg = load_config(None, [*SMALL, "name=twice", "rounds=1"])
    a = simulate(cfg, tmp_path / "a")
    b = simulate(cfg, tmp_path / "b")
    ca = ClientCodec.load(a.run_dir / "keys" / "client")
    cb = ClientCodec.load(b.run_dir / "keys" / "client")
    ma, _, _ = ca.decode((a.run_dir / "globals" / "round_001.bin").read_bytes())
    mb, _, _ = cb.decode((b.run_dir / "globals" / "round_001.bin").read_bytes())
    assert not np.allclose(ma, mb, atol=1e-3)
    for run in (a.run_dir, b.run_dir):
        assert {json.loads(e["client_record"])["rng"] for e in _ledger(run)} == {"os-csprng"}


def test_ledger_with_the_last_round_dropped_fails_verification(tmp_path: Path) -> None:
    """Issue 10, through the CLI a data owner and an auditor use: after a real run, each client
    exports its ledger head; the server drops the last round from the ledger, rebuilds its hash
    chain and the report (signed again), and deletes the clients' state folders. The rebuilt
    report verifies on its own, but not against the heads the clients signed."""
    import shutil
    import subprocess
    import sys

    from fedpriv.privacy import HashChainWriter

    run = tmp_path / "ledger"
    cfg = load_config(None, [*SMALL, "name=ledger"])
    simulate(cfg, run)

    def fedpriv(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedpriv.cli.main", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    heads = []
    for i in range(3):
        out = tmp_path / f"client-{i}.head.json"
        r = fedpriv(
            "client",
            "ledger-head",
            "--state-dir",
            str(run / "clients" / f"client-{i}"),
            "--out",
            str(out),
        )
        assert r.returncode == 0, r.stderr
        heads += ["--client-head", str(out)]
    assert fedpriv("report", "verify", str(run), *heads).returncode == 0
    # the attack
    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    last = max(e["round"] for e in entries)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        if e["round"] != last:
            w.append({k: v for k, v in e.items() if k not in ("seq", "prev", "hash")})
    shutil.rmtree(run / "clients")
    assert fedpriv("report", "build", str(run)).returncode == 0
    alone = fedpriv("report", "verify", str(run))
    assert alone.returncode == 0 and "[FLAG] client heads" in alone.stdout
    r = fedpriv("report", "verify", str(run), *heads)
    assert r.returncode == 9, r.stdout
    assert "[FAIL] client heads" in r.stdout and "latest rounds are missing" in r.stdout
