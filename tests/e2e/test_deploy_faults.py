"""Process-level faults on Flower's deployment engine (issue 7), on loopback, through the CLI.

One federation (3 SuperNodes, TLS + node auth, DP-SGD + BFV, 3 rounds, a round completes with
2 of 3 updates):

1. ``fedpriv run`` starts; while round 1 is in flight (client-2's SuperNode has received its
   train message) client-2's whole process group is SIGKILLed. Round 1 completes with the two
   other updates; client-2's entry is ``failed``.
2. Right after the server checkpointed round 1, the SuperLink is restarted. Its state is in
   memory, so the run dies with it (and the nodes get new ids); ``fedpriv run`` is stopped.
   The devices are started again (client-2 with its old state folder), and the run is resumed
   from ``checkpoint.json`` with ``fedpriv run --resume --out RUN`` and finishes rounds 2 and 3
   with all three clients.
3. A key holder decrypts the final model (``fedpriv client evaluate``): accuracy well above
   chance.

Every process started here is stopped at the end, and none is left behind.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.deploy_harness import (
    Cli,
    client_cli,
    connected,
    deploy_env,
    experiment_toml,
    fedpriv,
    free_port,
    leftover_processes,
    run_cli,
    start_server,
    stop_all,
    wait_for,
    warm_log,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = experiment_toml(
    "deploy-faults",
    seed=5,
    rounds=3,
    round_timeout_s=35,
    federation_extra="min_train_clients = 2\n",
)


def _start_clients(root: Path, port: int, env: dict[str, str], count: int) -> dict[int, Cli]:
    """Start the three devices; wait until connected (``count``-th time) and warm."""
    warm0 = {i: warm_log(root, i).count("ready") for i in range(3)}
    clients = {i: client_cli(root, port, i).start(env, root) for i in range(3)}
    for c in clients.values():
        wait_for(lambda c=c: connected(c, count), 150, f"{c.name} to connect")
    for i in clients:
        wait_for(lambda i=i: warm_log(root, i).count("ready") > warm0[i], 150, f"client-{i} warm")
    return clients


def _resume(root: Path, port: int, run_dir: Path, env: dict[str, str]) -> str:
    """`fedpriv run --resume --out RUN` on the restarted SuperLink; return its output."""
    from fedpriv.deploy.server import ServerState

    state = ServerState(root / "server-state")
    nodes = state.read_nodes()
    assert sorted(nodes) == ["client-0", "client-1", "client-2"], nodes
    r = fedpriv(
        [
            "run",
            "--resume",
            "--superlink",
            f"127.0.0.1:{port}",
            "--bundle",
            "fed/server",
            "--out",
            str(run_dir),
            "--server-state",
            "server-state",
            "--node-wait",
            "120",
            "--timeout",
            "300",
        ],
        env,
        root,
        timeout=400,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    return r.stdout


def _checkpoint_round(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "checkpoint.json").read_text())["round"])
    except (OSError, ValueError, KeyError):
        return 0


def test_killed_supernode_and_restarted_superlink(tmp_path: Path) -> None:
    root = tmp_path
    env, marker = deploy_env(root)
    cfg_path = root / "cfg.toml"
    cfg_path.write_text(CONFIG)
    run_dir = root / "run"
    procs: list[Cli] = []
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    try:
        r = fedpriv(
            ["keys", "init", "--nodes", "3", "--out", "fed", "--config", str(cfg_path)], env, root
        )
        assert r.returncode == 0, r.stderr[-3000:]
        port = free_port()
        server = start_server(root, port, env, 1)
        procs.append(server)
        clients = _start_clients(root, port, env, 1)
        procs.extend(clients.values())
        timings["clients_ready"] = time.monotonic() - t0
        run = run_cli(root, f"127.0.0.1:{port}", cfg_path, run_dir).start(env, root)
        procs.append(run)

        # 1. SIGKILL client-2 (its whole process group) while it works on round 1.
        log2 = root / "state-2" / "logs" / "supernode.log"
        start2 = log2.stat().st_size
        wait_for(
            lambda: (
                "Receiving: train message" in log2.read_bytes()[start2:].decode(errors="replace")
                or not run.alive()
            ),
            180,
            "client-2 to receive its round-1 train message",
        )
        assert run.alive(), run.text()[-3000:]
        assert _checkpoint_round(run_dir) == 0
        clients[2].signal_group(signal.SIGKILL)
        assert clients[2].popen is not None
        clients[2].popen.wait(10)
        wait_for(lambda: not leftover_processes(root / "state-2"), 20, "client-2's processes")
        timings["client2_killed"] = time.monotonic() - t0

        # 2. Round 1 completes without client-2; restart the SuperLink before round 2 ends.
        wait_for(
            lambda: _checkpoint_round(run_dir) >= 1 or not run.alive(), 180, "round 1 checkpoint"
        )
        assert _checkpoint_round(run_dir) == 1, run.text()[-3000:]
        timings["round1_done"] = time.monotonic() - t0
        from fedpriv.deploy.server import ServerState

        old_nodes = ServerState(root / "server-state").read_nodes()
        server.stop()
        assert not server.alive()
        run.stop()  # it only polls a SuperLink that no longer knows the run
        for i in (0, 1):
            clients[i].stop()
        server = start_server(root, port, env, 2, "-restarted")
        procs.append(server)
        clients = _start_clients(root, port, env, 2)
        procs.extend(clients.values())
        timings["restarted"] = time.monotonic() - t0
        m1 = json.loads((run_dir / "metrics.json").read_text())
        assert [r["round"] for r in m1["rounds"]] == [1]

        # 3. Resume from the checkpoint on the new SuperLink; rounds 2 and 3 run.
        out = _resume(root, port, run_dir, env)
        assert "finished:completed" in out
        timings["run_done"] = time.monotonic() - t0

        m = json.loads((run_dir / "metrics.json").read_text())
        rounds = m["rounds"]
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert [r["accepted"] for r in rounds] == [2, 3, 3]
        # Round 1: the killed node's update is missing (keyed by its node id: it never sent a
        # signed record naming its client); the other two were accepted.
        r1 = rounds[0]["clients"]
        killed = r1[f"node-{old_nodes['client-2']}"]
        assert killed["status"] == "failed" and "no reply" in killed["reason"], killed
        assert r1["client-0"]["status"] == r1["client-1"]["status"] == "accepted"
        assert rounds[0]["failed"] == 1 and len(r1) == 3
        # The restarted SuperLink registered the same keys under new node ids.
        new_nodes = ServerState(root / "server-state").read_nodes()
        assert set(new_nodes.values()).isdisjoint(old_nodes.values())
        for r in rounds[1:]:
            assert {c["status"] for c in r["clients"].values()} == {"accepted"}
        assert m["resumed"][-1]["from_round"] == 2
        # client-2 trained rounds 2 and 3 (round 1 is charged only if it got that far)..
        e = {cid: rounds[2]["clients"][cid]["epsilon"] for cid in ("client-0", "client-2")}
        assert 0 < e["client-2"] <= e["client-0"]

        # 4. The key holder decrypts: the final model is well above chance (10 classes).
        ev = fedpriv(
            [
                "client",
                "evaluate",
                "--run-dir",
                str(run_dir),
                "--bundle",
                str(root / "fed" / "clients" / "client-0"),
                "--out",
                str(root / "eval"),
            ],
            env,
            root,
        )
        assert ev.returncode == 0, ev.stderr[-3000:]
        dep = json.loads((root / "eval" / "metrics.json").read_text())
        assert len(dep["rounds"]) == 3
        assert dep["rounds"][-1]["heldout_accuracy"] > 0.5, dep["rounds"][-1]
        timings["evaluated"] = time.monotonic() - t0
        print("fault test timings (s since start):", json.dumps(timings))
    finally:
        stop_all(procs, root, marker)
