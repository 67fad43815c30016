"""Scale-out: the simulation joins an existing Ray cluster instead of starting its own.

A head node is started on loopback with ``ray start --head --block`` in its own process
session and its own ``--temp-dir`` (so no other Ray user on the machine auto-connects to it).
A tiny simulation runs with ``simulation.ray_address`` pointing at it. The test proves the
driver joined that cluster: ``ray.init`` (spied) got the address and returned the cluster's
GCS address and session directory, and the cluster's own log folder holds a driver log for
this process. Teardown ends only the processes this test started: the ``ray start`` session's
process group, then any process whose command line names the private temp dir. (``ray stop``
would stop every Ray process on the machine, other users' included.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (never this test process)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmd:
            out.append(int(d))
    return out


def _ray_cli() -> str:
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else (shutil.which("ray") or "ray")


def _stop(head: subprocess.Popen[bytes], temp_dir: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=10)
    deadline = time.monotonic() + 20
    while (left := _pids_mentioning(temp_dir)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM if time.monotonic() < deadline - 10 else signal.SIGKILL)
        time.sleep(0.5)


@pytest.fixture
def ray_head() -> Iterator[dict[str, Any]]:
    """A one-node Ray cluster on 127.0.0.1 with 2 CPUs; yields its address and temp dir."""
    port = _free_port()
    # Short path: Ray's Unix sockets live under it (a 107-byte limit).
    temp_dir = tempfile.mkdtemp(prefix="fpray", dir="/tmp")
    cmd = [
        _ray_cli(),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        "--node-ip-address=127.0.0.1",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        f"--ray-client-server-port={_free_port()}",
        f"--dashboard-agent-listen-port={_free_port()}",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = Path(temp_dir) / "ray-start.log"
    with log.open("wb") as fh:
        head = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if head.poll() is not None:
                pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
            ok = subprocess.run(
                [_ray_cli(), "status", f"--address={address}"],
                capture_output=True,
                env=env,
                check=False,
                timeout=60,
            )
            if ok.returncode == 0:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Ray head on {address} not ready:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield {"address": address, "port": port, "temp_dir": temp_dir}
    finally:
        _stop(head, temp_dir)
        left = _pids_mentioning(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster left behind: {left}"


def test_simulation_joins_existing_ray_cluster(
    ray_head: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    seen: dict[str, Any] = {}
    real_init = ray.init

    def spy_init(*args: Any, **kwargs: Any) -> Any:
        ctx = real_init(*args, **kwargs)
        seen["kwargs"] = dict(kwargs)
        seen["address_info"] = dict(ctx.address_info)
        seen["nodes"] = ray.nodes()
        return ctx

    monkeypatch.setattr(ray, "init", spy_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cfg = load_config(
        None,
        [
            "name=ray-cluster",
            "rounds=1",
            "federation.num_clients=2",
            "train.local_epochs=1",
            "privacy.mode=off",
            f"simulation.ray_address={ray_head['address']}",
        ],
    )
    res = simulate(cfg, tmp_path / "run")

    # The run worked, on the cluster's workers.
    (rnd,) = res.metrics["rounds"]
    assert rnd["accepted"] == 2
    # The driver was pointed at the cluster and joined it, rather than starting its own.
    assert seen["kwargs"].get("address") == ray_head["address"]
    assert "num_cpus" not in seen["kwargs"]
    info = seen["address_info"]
    # Ray reports loopback as the machine's address: the port and the session identify the cluster.
    assert info["gcs_address"].rsplit(":", 1)[1] == str(ray_head["port"])
    session = Path(info["session_dir"]).resolve()
    assert Path(ray_head["temp_dir"]).resolve() in session.parents
    (node,) = seen["nodes"]  # the head alone, with the 2 CPUs `ray start` gave it
    assert node["Alive"] and node["Resources"]["CPU"] == 2.0
    # The cluster itself recorded this process as one of its drivers.
    drivers = list((session / "logs").glob(f"python-core-driver-*_{os.getpid()}.log"))
    assert drivers, sorted(p.name for p in (session / "logs").iterdir())
    # simulate() disconnected from the cluster and left it running.
    assert not ray.is_initialized()
    status = subprocess.run(
        [_ray_cli(), "status", f"--address={ray_head['address']}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
