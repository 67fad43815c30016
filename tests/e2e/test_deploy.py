"""Deployment on Flower's deployment engine, on loopback, driven through the CLI a user runs.

One module-scoped federation: ``fedpriv keys init`` (2 nodes with the HE secret in their
bundles) + ``fedpriv keys add-node --sealed`` (the third node gets its secret sealed and relayed
by the server), ``fedpriv server start`` (flower-superlink, TLS + SuperNode auth), three
``fedpriv client start`` (flower-supernode each, separate processes), one ``fedpriv run`` of 2
rounds with DP-SGD and BFV. During the run, client-1 is stopped right after it delivered round 1
and started again before round 2 (the ServerApp process is paused meanwhile; see the fixture).

Every process a test starts is stopped at the end, even on failure; the module then checks that
no Flower process it started (matched by command line or working directory under its temporary
folder) is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
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
    server_side_files,
    serverapp_pids,
    start_server,
    stop_all,
    wait_for,
    warm_log,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = experiment_toml("deploy-e2e")


# ----------------------------------------------------------------------------- the federation
@dataclass
class Federation:
    root: Path
    env: dict[str, str]
    port: int
    fed: Path
    cfg_path: Path
    run_dir: Path
    server: Cli
    clients: dict[int, Cli]
    run_stdout: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    node_ids: dict[str, list[int]] = field(default_factory=dict)
    procs: list[Cli] = field(default_factory=list)

    @property
    def superlink(self) -> str:
        return f"127.0.0.1:{self.port}"

    def state(self, i: int) -> Path:
        return self.root / f"state-{i}"


def _node_ids(state: Path) -> list[int]:
    log = state / "logs" / "supernode.log"
    return [int(m) for m in re.findall(r"SuperNode ID:\s*(\d+)", log.read_text(errors="replace"))]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    root = tmp_path_factory.mktemp("deploy")
    env, marker = deploy_env(root)
    cfg_path = root / "cfg.toml"
    cfg_path.write_text(CONFIG)
    procs: list[Cli] = []
    paused: list[int] = []
    t0 = time.monotonic()
    try:
        r = fedpriv(
            ["keys", "init", "--nodes", "2", "--out", "fed", "--config", str(cfg_path)], env, root
        )
        assert r.returncode == 0, r.stderr[-3000:]
        r = fedpriv(["keys", "add-node", "--out", "fed", "--sealed"], env, root)
        assert r.returncode == 0 and "client-2" in r.stdout, r.stderr[-3000:]
        t_keys = time.monotonic() - t0
        port = free_port()
        server = start_server(root, port, env)
        procs.append(server)
        t_server = time.monotonic() - t0
        clients = {i: client_cli(root, port, i).start(env, root) for i in range(3)}
        procs.extend(clients.values())
        for c in clients.values():
            wait_for(lambda c=c: connected(c), 120, f"{c.name} to connect")
        for (
            i
        ) in clients:  # the warm ClientApp servers finish importing (else the first tasks run cold)
            wait_for(lambda i=i: "ready" in warm_log(root, i), 120, f"client-{i}'s warm server")
        fedn = Federation(
            root, env, port, root / "fed", cfg_path, root / "run", server, clients, procs=procs
        )
        fedn.node_ids["client-1"] = _node_ids(fedn.state(1))
        t_clients = time.monotonic() - t0
        run = run_cli(root, fedn.superlink, cfg_path, fedn.run_dir).start(env, root)
        procs.append(run)
        # The key relay finishes first (client-2 has no secret until then).
        wait_for(
            lambda: (fedn.run_dir / "relay.jsonl").exists() or not run.alive(), 240, "the key relay"
        )
        assert run.alive(), run.text()[-3000:]
        log1 = fedn.state(1) / "logs" / "supernode.log"
        start1 = log1.stat().st_size

        def round1_sent() -> bool:
            text = log1.read_bytes()[start1:].decode(errors="replace")
            i = text.find("Sending: train message")
            return i != -1 and "Sent successfully" in text[i:]

        wait_for(lambda: round1_sent() or not run.alive(), 240, "client-1 to deliver round 1")
        assert run.alive(), run.text()[-3000:]
        t_round1 = time.monotonic() - t0
        # Restart client-1 between rounds. The ServerApp is paused meanwhile: the SuperLink
        # answers "node unavailable" for a node that is offline when the ServerApp collects
        # replies, and this test is about the device's restart, not about a round it misses.
        apps = serverapp_pids(root)
        assert apps, "no running flwr-serverapp found"
        paused.extend(apps)
        for pid in apps:
            os.kill(pid, signal.SIGSTOP)
        clients[1].stop()
        assert not clients[1].alive()
        restarted = client_cli(root, port, 1).start(env, root)
        procs.append(restarted)
        clients[1] = restarted
        wait_for(lambda: connected(restarted, 2), 120, "client-1 to reconnect")
        fedn.node_ids["client-1"] = _node_ids(fedn.state(1))
        for pid in apps:
            os.kill(pid, signal.SIGCONT)
        paused.clear()
        assert run.popen is not None
        rc = run.popen.wait(600)
        fedn.run_stdout = run.text()
        assert rc == 0, fedn.run_stdout[-4000:]
        fedn.timings = {
            "keys": t_keys,
            "server_ready": t_server,
            "clients_connected": t_clients,
            "round1_delivered": t_round1,
            "run_done": time.monotonic() - t0,
        }
        print("deployment timings (s since start):", json.dumps(fedn.timings))
        yield fedn
    finally:
        for pid in paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        stop_all(procs, root, marker)


# ----------------------------------------------------------------------------- tests
def _codec(path: Path):  # type: ignore[no-untyped-def]
    from fedpriv.crypto.codec import ClientCodec

    return ClientCodec.load(path)


@pytest.mark.usefixtures("no_leftover_processes")
def test_three_supernodes_two_rounds_match_simulation(
    federation: Federation, tmp_path: Path
) -> None:
    """TLS + node auth, DP + BFV, 2 rounds: the decrypted models equal simulation's within the bound.

    What must be equal for that: every client sampled every round (fraction_train=1), the same
    partition ids (``--partition-id``), the same seed and the same device test seed. Then each client's
    update is bit-for-bit the same computation in both engines, and the aggregates differ only
    by the BFV stochastic rounding (fresh randomness per encryption), which
    ``HEParams.error_bound`` bounds. Round 2 starts from models that already differ by up to the
    round-1 bound, so its tolerance is the round-2 bound plus the round-1 bound.
    """
    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    f = federation
    out = f.run_stdout
    assert "finished:completed" in out and "sealed keys relayed: client-2=stored" in out
    m = json.loads((f.run_dir / "metrics.json").read_text())
    assert [r["accepted"] for r in m["rounds"]] == [3, 3]
    # The key holder evaluates (the server holds ciphertext only).
    ev = fedpriv(
        [
            "client",
            "evaluate",
            "--run-dir",
            str(f.run_dir),
            "--bundle",
            str(f.fed / "clients" / "client-0"),
            "--out",
            str(tmp_path / "eval"),
        ],
        f.env,
        f.root,
    )
    assert ev.returncode == 0, ev.stderr[-3000:]
    dep = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    cfg = load_config(f.cfg_path)
    sim = simulate(cfg, tmp_path / "sim", insecure_test_seed=11)
    smet = sim.metrics
    sim_codec = _codec(tmp_path / "sim" / "keys" / "client")
    dep_codec = _codec(f.fed / "clients" / "client-0")
    prev_bound = 0.0
    for r in (1, 2):
        a, wa, na = sim_codec.decode(
            (tmp_path / "sim" / "globals" / f"round_{r:03d}.bin").read_bytes()
        )
        b, wb, nb = dep_codec.decode((f.run_dir / "globals" / f"round_{r:03d}.bin").read_bytes())
        assert (wa, na) == (wb, nb) == (1152.0, 3)
        bound = sim_codec.params.error_bound(int(wa), na) + dep_codec.params.error_bound(
            int(wb), nb
        )
        diff = float(np.abs(a - b).max())
        assert diff <= bound + prev_bound, (r, diff, bound, prev_bound)
        prev_bound = bound
    for rs, rd in zip(smet["rounds"], dep["rounds"], strict=True):
        assert rd["heldout_accuracy"] == pytest.approx(rs["heldout_accuracy"], abs=1 / 360 + 1e-9)
        for cid, c in rs["clients"].items():
            assert rd["clients"][cid]["epsilon"] == pytest.approx(c["epsilon"], rel=1e-9)
    assert dep["rounds"][-1]["heldout_accuracy"] > 0.5


def test_restarted_client_continues_its_cumulative_epsilon(federation: Federation) -> None:
    """client-1 was stopped after round 1 and started again; round 2 charges on top of round 1."""
    from fedpriv.privacy import DpEvent, opacus_epsilon
    from fedpriv.privacy.state import ClientPrivacyState

    f = federation
    ids = f.node_ids["client-1"]
    assert len(ids) == 2 and ids[0] == ids[1], ids  # same registered node after the restart
    m = json.loads((f.run_dir / "metrics.json").read_text())
    e1 = m["rounds"][0]["clients"]["client-1"]["epsilon"]
    e2 = m["rounds"][1]["clients"]["client-1"]["epsilon"]
    assert e2 > e1 > 0
    assert e2 == pytest.approx(m["rounds"][1]["clients"]["client-0"]["epsilon"], rel=1e-9)
    state_file = f.state(1) / "privacy_state.json"
    assert state_file.stat().st_mode & 0o077 == 0
    st = ClientPrivacyState.from_json(state_file.read_text())
    (run,) = st.runs  # one run on this device's data: its epsilon is the lifetime epsilon
    assert list(run.rounds_trained) == [1, 2]
    assert st.run_epsilon(run.run_id) == pytest.approx(e2, rel=1e-9)
    assert st.epsilon() == pytest.approx(e2, rel=1e-9)
    hist = [DpEvent.from_any(h) for h in st.to_dict()["history"]]
    assert opacus_epsilon(hist, st.delta, st.accountant) == pytest.approx(e2, rel=1e-9)


def _windows(secret: bytes, width: int = 48) -> list[bytes]:
    step = max(1, (len(secret) - width) // 64)
    return [secret[i : i + width] for i in range(0, len(secret) - width + 1, step)]


def _contains_secret(data: bytes, secret: bytes, windows: list[bytes]) -> bool:
    return secret in data or any(w in data for w in windows)


def test_server_side_never_holds_the_he_secret(federation: Federation) -> None:
    """Bundle, state folder, run folder (relayed blobs included) and logs: no secret key bytes."""
    from fedpriv.crypto import KeyHolder

    f = federation
    secret = KeyHolder.load(f.fed / "clients" / "client-0" / "secret.key").secret_key_bytes()
    assert len(secret) > 1000
    windows = _windows(secret)
    # positive controls: the search finds the key where it is
    assert _contains_secret(
        (f.fed / "clients" / "client-0" / "secret.key").read_bytes(), secret, windows
    )
    assert _contains_secret((f.state(2) / "keys" / "secret.key").read_bytes(), secret, windows)
    files = server_side_files(f.root, f.run_dir)
    for p in files:
        assert not _contains_secret(p.read_bytes(), secret, windows), f"HE secret found in {p}"
    assert len(files) > 15
    relayed = list((f.run_dir / "relay").glob("*.sealed"))
    assert [p.name for p in relayed] == ["client-2.sealed"]
    assert not any(p.name in ("secret.key", "he_secret.key") for p in (f.fed / "server").rglob("*"))


def test_unregistered_node_is_refused(federation: Federation) -> None:
    """A node the dealer added after the server registered its nodes cannot join."""
    f = federation
    r = fedpriv(["keys", "add-node", "--out", "fed"], f.env, f.root)
    assert r.returncode == 0, r.stderr
    cli = Cli(
        "client-3",
        [
            "client",
            "start",
            "--superlink",
            f.superlink,
            "--bundle",
            "fed/clients/client-3",
            "--state-dir",
            "state-3",
            "--data",
            "digits",
            "--connect-timeout",
            "60",
        ],
        f.root / "client-3.out",
    ).start(f.env, f.root)
    f.procs.append(cli)
    assert cli.popen is not None
    rc = cli.popen.wait(120)
    out = cli.text()
    assert rc == 4, out[-3000:]
    assert "refused node client-3" in out and "not registered" in out
    assert "No SuperNode found with the given public key" in (
        f.root / "server-state" / "logs" / "superlink.log"
    ).read_text(errors="replace")
    assert not leftover_processes(f.root / "state-3")


def test_client_without_tls_cannot_connect(federation: Federation, tmp_path: Path) -> None:
    """A SuperNode speaking plain HTTP, or trusting another CA, never gets a node id."""
    from fedpriv.config import load_config
    from fedpriv.deploy.dealer import init_federation
    from fedpriv.deploy.processes import flower_exe

    f = federation
    log = tmp_path / "insecure.log"
    with open(log, "wb") as fh:
        p = subprocess.Popen(
            [
                flower_exe("flower-supernode"),
                "--insecure",
                "--superlink",
                f.superlink,
                "--max-retries",
                "3",
                "--max-wait-time",
                "20",
                "--port",
                str(free_port()),
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            env={**f.env, "FLWR_HOME": str(tmp_path / "flwr")},
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            rc = p.wait(90)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    text = log.read_text(errors="replace")
    assert rc != 0 and "SuperNode ID" not in text, text[-2000:]
    # the proxy answers plain HTTP on its TLS port with 400 and never forwards it
    assert "Client error '400 Bad Request'" in text
    # A bundle from another dealer (another CA) cannot verify the server's certificate.
    other = init_federation(
        load_config(f.cfg_path), tmp_path / "other", nodes=1, num_values=650, max_examples=384
    )
    r = fedpriv(
        [
            "client",
            "start",
            "--superlink",
            f.superlink,
            "--bundle",
            str(other.client_bundles["client-0"]),
            "--state-dir",
            str(tmp_path / "st"),
            "--data",
            "digits",
            "--connect-timeout",
            "20",
        ],
        f.env,
        tmp_path,
        timeout=120,
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "TLS verification of the SuperLink" in r.stderr and "CA" in r.stderr
    assert not leftover_processes(tmp_path)


def test_failed_run_exits_non_zero_with_the_serverapp_log(
    federation: Federation, tmp_path: Path
) -> None:
    """`flwr run` accepts the run and returns 0; `fedpriv run` waits for the real status."""
    f = federation
    r = fedpriv(
        [
            "run",
            "--superlink",
            f.superlink,
            "--bundle",
            "fed/server",
            "--config",
            str(f.cfg_path),
            "--out",
            str(tmp_path / "failed"),
            "--server-state",
            "server-state",
            "--remote-bundle",
            str(tmp_path / "no-such-bundle"),
            "--no-relay",
            "--timeout",
            "180",
        ],
        f.env,
        f.root,
        timeout=240,
    )
    assert r.returncode == 8, r.stdout + r.stderr
    assert "ended finished:failed" in r.stderr and "ServerApp log" in r.stderr
    assert "no-such-bundle" in r.stderr  # the ServerApp's own error, from `flwr log`
