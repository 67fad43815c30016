"""End to end on Flower's simulation engine (Ray), with real Opacus and TenSEAL."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedpriv.config import load_config
from fedpriv.data import load_dataset
from fedpriv.privacy import DpEvent, opacus_epsilon, pld_epsilon, read_chain, verify_chain
from fedpriv.privacy.training import sample_rate, steps_per_round
from fedpriv.runs.prepare import partition_sizes
from fedpriv.simulation import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]


def _ledger(run: Path) -> list[dict]:
    entries = read_chain(run / "privacy_ledger.jsonl")
    verify_chain(entries)
    return entries


@pytest.mark.slow
def test_default_cli_run_dp_bfv(tmp_path: Path) -> None:
    """`fedpriv simulate` exactly as the README runs it: DP + BFV, digits, 10 clients, 5 rounds."""
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpriv.cli.main",
            "simulate",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "round 5/5" in proc.stdout and "epsilon spent per client" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert len(m["rounds"]) == 5 and m["encryption"] == "bfv"
    acc = m["rounds"][-1]["heldout_accuracy"]
    # Band: well above chance (10%), and below what the same model reaches without noise
    # (~0.93 measured): an upper bound that catches missing noise.
    assert 0.55 <= acc <= 0.90, acc
    for r in m["rounds"]:
        assert r["accepted"] == 10
        for c in r["clients"].values():
            assert 0 < c["epsilon"] <= 8.0 + 1e-6
            # BFV seeded upload: 2 ciphertexts for 6,090 values (padding makes it ~1.4x here)
            assert c["bytes_up"] < 2 * 4 * m["num_values"]
    ledger = _ledger(out)
    assert len(ledger) == 50
    # the reported epsilon is exactly what an accountant recomputes from the stored history
    for e in ledger:
        hist = [DpEvent.from_any(h) for h in e["history"]]
        assert e["epsilon"] == pytest.approx(
            opacus_epsilon(hist, e["delta"], e["accountant"]), rel=1e-9
        )
        assert pld_epsilon(hist, e["delta"]) <= e["epsilon"] * 1.02
    w = load_file(str(out / "model.safetensors"))
    assert sum(v.size for v in w.values()) == m["num_values"]
    assert all(np.isfinite(v).all() for v in w.values())
    # the server-side view holds ciphertext only
    assert (out / "globals" / "round_005.bin").read_bytes()[:4] == b"FPHE"
    _assert_server_view_is_public_only(out)


def _assert_server_view_is_public_only(out: Path) -> None:
    """What the server wrote (state, records, encrypted globals, its keys) holds no HE secret
    and no plaintext model weights."""
    from fedpriv.crypto import KeyHolder

    secret = KeyHolder.load(out / "keys" / "client" / "secret.key").secret_key_bytes()
    model = b"".join(
        v.astype("<f4").tobytes() for v in load_file(str(out / "model.safetensors")).values()
    )
    server_files = [
        p
        for p in out.rglob("*")
        if p.is_file()
        and not p.is_relative_to(out / "keys" / "client")  # the clients' key folder
        and not p.is_relative_to(out / "clients")  # the clients' own state
        and p.name not in ("model.safetensors",)  # written by the key holder after decrypting
        and not p.name.startswith("privacy_report")  # built by the data owner
    ]
    assert any(p.name == "checkpoint.json" for p in server_files)
    windows = [secret[i : i + 64] for i in range(0, len(secret) - 64, 997)]
    weights = [model[i : i + 64] for i in range(0, len(model) - 64, 4001)]
    for p in server_files:
        data = p.read_bytes()
        assert not any(w in data for w in windows), f"{p} contains HE secret key bytes"
        assert not any(w in data for w in weights), f"{p} contains plaintext model weights"


def test_nonprivate_plaintext_reaches_90_percent(tmp_path: Path) -> None:
    cfg = load_config(None, ["privacy.mode=off", "encryption.scheme=off", "name=plain"])
    res = simulate(cfg, tmp_path / "plain")
    assert res.final_accuracy is not None and res.final_accuracy >= 0.90, res.final_accuracy
    egress = read_chain(res.run_dir / "egress.jsonl")
    assert {e["encrypted"] for e in egress if e["kind"] == "model-update"} == {False}


def test_budget_refusal_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    """Clients whose next round would pass max_epsilon refuse; the others keep training."""
    base = [
        "name=budget",
        "rounds=3",
        "federation.num_clients=4",
        "train.model=logreg",
        "privacy.noise_multiplier=1.0",
        "encryption.scheme=ckks",
    ]
    cfg = load_config(None, base)
    train, _ = load_dataset("digits", seed=cfg.seed)
    sizes = partition_sizes(cfg, train)

    def eps_after(n: int, rounds: int) -> float:
        ev = DpEvent(
            1.0,
            sample_rate(n, cfg.train.batch_size),
            steps_per_round(n, cfg.train.batch_size, cfg.train.local_epochs),
        )
        return opacus_epsilon([ev] * rounds, cfg.privacy.delta, cfg.privacy.accountant)

    after2 = sorted(eps_after(n, 2) for n in sizes)
    assert after2[0] < after2[-1] - 0.05, "partition sizes too similar for this test"
    budget = (after2[0] + after2[-1]) / 2
    cfg = load_config(
        None, [*base, f"privacy.max_epsilon={budget}", f"privacy.target_epsilon={budget}"]
    )
    res = simulate(cfg, tmp_path / "b")
    rounds = res.metrics["rounds"]
    assert rounds[0]["refused"] == 0 and rounds[0]["accepted"] == 4
    assert rounds[1]["refused"] >= 1 and rounds[1]["accepted"] >= 1
    ledger = _ledger(res.run_dir)
    refused = [e for e in ledger if e["status"] == "refused"]
    assert refused and all(not e["trained"] for e in refused)
    for e in ledger:
        assert e["epsilon"] <= budget + 1e-9
    # a refusing client's spent epsilon stays what it was (no charge, no reset)
    for e in refused:
        prev = [p for p in ledger if p["client_id"] == e["client_id"] and p["round"] < e["round"]]
        assert prev and math.isclose(e["epsilon"], prev[-1]["epsilon"])


def test_flwr_run_engine_reports_a_failed_run(tmp_path: Path) -> None:
    """A run whose ServerApp fails must come back as a failure, not Flower's exit 0."""
    from fedpriv.errors import RunFailedError
    from fedpriv.runs import FlowerRunConfig
    from fedpriv.runs.flwr_cli import flwr_run_local
    from fedpriv.simulation import project_folder

    with pytest.raises(RunFailedError, match="failed"):
        # a key folder that does not exist: the ServerApp cannot load public parameters
        flwr_run_local(
            project_folder(None),
            FlowerRunConfig(keys_dir=str(tmp_path / "nokeys"), run_dir=str(tmp_path / "r")),
            num_supernodes=2,
            timeout=300,
        )


def test_client_level_budget_stops_the_run_before_it_is_exceeded(tmp_path: Path) -> None:
    """Client-level DP: the run stops before the round that would pass client_max_epsilon."""
    from fedpriv.privacy.client_level import client_level_epsilon, client_level_plan

    base = [
        "name=cl",
        "rounds=4",
        "federation.num_clients=3",
        "train.model=logreg",
        "privacy.mode=client",
        "privacy.client_noise_multiplier=1.5",
    ]
    plan = client_level_plan(load_config(None, base))
    eps2, eps3 = (client_level_epsilon(plan, r, 1e-5) for r in (2, 3))
    budget = (eps2 + eps3) / 2
    res = simulate(
        load_config(None, [*base, f"privacy.client_max_epsilon={budget}"]), tmp_path / "cl"
    )
    m = res.metrics
    assert [r["round"] for r in m["rounds"]] == [1, 2]
    assert "round 3 would raise the client-level epsilon" in m["stop_reason"]
    ledger = _ledger(res.run_dir)
    assert max(e["client_level_epsilon"] for e in ledger) == pytest.approx(eps2, rel=1e-9)
    assert m["client_level"]["k_min"] == 3 and all(r["accepted"] == 3 for r in m["rounds"])
