"""Threshold custody on Flower's deployment engine, on loopback, through the CLI a user runs.

``fedpriv keys init --nodes 3 --threshold 2 --sealed`` (each node's share and the mask key
sealed to its node key and relayed by the server), ``fedpriv server start`` (TLS, SuperNode
authentication), three ``fedpriv client start``, one ``fedpriv run`` of 2 rounds with DP-SGD and
BFV under threshold custody. Then: every round was decrypted by 2 of the 3 nodes, a key holder
evaluates the run from the combined decryptions, and nothing on the server's side holds a share
or the mask key.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.deploy_harness import (
    Cli,
    client_cli,
    deploy_env,
    experiment_toml,
    fedpriv,
    free_port,
    run_cli,
    server_side_files,
    start_server,
    stop_all,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = experiment_toml(
    "deploy-threshold", encryption_extra='key_custody = "threshold"\nthreshold = 2\n'
)


@dataclass
class Run:
    root: Path
    env: dict[str, str]
    fed: Path
    run_dir: Path
    stdout: str
    seconds: float


@pytest.fixture(scope="module")
def threshold_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("deploy-threshold")
    env, marker = deploy_env(root)
    cfg = root / "cfg.toml"
    cfg.write_text(CONFIG)
    procs: list[Cli] = []
    try:
        r = fedpriv(
            [
                "keys",
                "init",
                "--nodes",
                "3",
                "--threshold",
                "2",
                "--sealed",
                "--out",
                "fed",
                "--config",
                str(cfg),
            ],
            env,
            root,
        )
        assert r.returncode == 0 and "2 of 3 nodes decrypt" in r.stdout, r.stderr[-3000:]
        port = free_port()
        server = start_server(root, port, env)
        procs.append(server)
        clients = [client_cli(root, port, i, seed=None).start(env, root) for i in range(3)]
        procs.extend(clients)
        for c in clients:
            wait_for(lambda c=c: "connected to" in c.text() or not c.alive(), 120, c.name)
            assert c.alive(), c.text()[-3000:]
        t0 = time.monotonic()
        run = run_cli(root, f"127.0.0.1:{port}", cfg, root / "run", 900).start(env, root)
        procs.append(run)
        assert run.popen is not None
        rc = run.popen.wait(960)
        assert rc == 0, run.text()[-4000:]
        yield Run(root, env, root / "fed", root / "run", run.text(), time.monotonic() - t0)
    finally:
        stop_all(procs, root, marker)


@pytest.mark.usefixtures("no_leftover_processes")
def test_two_rounds_decrypted_by_two_of_three_nodes(threshold_run: Run, tmp_path: Path) -> None:
    f = threshold_run
    assert "finished:completed" in f.stdout
    assert "sealed keys relayed: client-0=stored, client-1=stored, client-2=stored" in f.stdout
    m = json.loads((f.run_dir / "metrics.json").read_text())
    assert m["key_custody"] == "threshold" and m["threshold"]["threshold"] == 2
    timings = []
    for r in m["rounds"]:
        d = r["decryption"]
        assert r["accepted"] == 3 and d["status"] == "decrypted" and len(d["participants"]) == 2
        timings.append(
            {
                "round_s": round(r["seconds"], 2),
                "decrypt_s": round(d["seconds"], 2),
                "update_bytes": max(c["bytes_up"] for c in r["clients"].values()),
                "aggregate_bytes": d["aggregate_bytes"],
                "request_bytes": d["request_bytes"],
                "partial_bytes": d["partial_bytes"],
                "combined_bytes": d["combined_bytes"],
            }
        )
    print("deployment, threshold custody, per round:", json.dumps(timings))
    # Any key holder finishes the combined decryptions: here a device with its relayed keys.
    ev = fedpriv(
        [
            "client",
            "evaluate",
            "--run-dir",
            str(f.run_dir),
            "--state-dir",
            str(f.root / "state-0"),
            "--out",
            str(tmp_path / "eval"),
        ],
        f.env,
        f.root,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    dep = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert dep["rounds"][-1]["heldout_accuracy"] > 0.5
    assert [r["aggregate_count"] for r in dep["rounds"]] == [3, 3]
    # Each device counted its partial decryptions; two decrypted each round.
    used = []
    for i in range(3):
        p = f.root / f"state-{i}" / "decryptions.json"
        used.append(sum(json.loads(p.read_text()).values()) if p.exists() else 0)
    assert sum(used) == 4


@pytest.mark.usefixtures("no_leftover_processes")
def test_server_side_holds_no_share_and_no_mask_key(threshold_run: Run) -> None:
    from fedpriv.crypto.rq import pack_bits
    from fedpriv.crypto.tcustody import ThresholdPublic, load_mask_key, load_share

    f = threshold_run
    windows: list[bytes] = []
    masks: list[bytes] = []
    for i in range(3):
        keys = f.root / f"state-{i}" / "keys"
        share = load_share(keys, f"client-{i}", ThresholdPublic.load(keys))
        p = share.params
        rows = b"".join(pack_bits(share.residues()[j], b) for j, b in enumerate(p.prime_bits))
        windows += [rows[k : k + 48] for k in range(0, len(rows) - 48, 509)]
        masks.append(load_mask_key(keys / "mask.key"))
    assert any(w in (f.root / "state-0" / "keys" / "he_share.fpkey").read_bytes() for w in windows)
    files = server_side_files(f.root, f.run_dir, f.fed / "dealer")
    for path in files:
        data = path.read_bytes()
        assert not any(w in data for w in windows), f"a key share in {path}"
        if not path.is_relative_to(f.fed / "dealer"):
            assert not any(k in data for k in masks), f"the mask key in {path}"
    assert len(files) > 15
    with contextlib.suppress(FileNotFoundError):
        assert not list((f.fed / "server").rglob("*.fpkey"))
