"""The Ray workers a simulation starts (its virtual devices) run at normal priority."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

_PROBE = """
import os, ray
from fedpriv.config import load_config
from fedpriv.simulation import _backend_config

init = _backend_config(load_config(None, []))["init_args"]
ray.init(**init)

@ray.remote(num_cpus=1)
def niceness():
    return os.nice(0)

print("NICE", ray.get(niceness.remote()))
ray.shutdown()
"""


@pytest.mark.parametrize(("preset", "expected"), [(None, 0), ("7", 7)])
def test_simulation_workers_are_not_deprioritised(
    preset: str | None, expected: int, no_leftover_processes: None
) -> None:
    """Ray starts workers at nice 15: behind any busy process the devices starve (a 30 s run did
    not finish round 1 in 5 min). A simulation asks for 0 unless the user set a value."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_worker_niceness"}
    if preset is not None:
        env["RAY_worker_niceness"] = preset
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"NICE {expected}" in out.stdout.splitlines()


def test_flwr_engine_passes_the_niceness_to_its_local_superlink(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedpriv.runs.flwr_cli import FlwrCli

    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    local = FlwrCli.local(tmp_path / "local")
    assert local.env()["RAY_worker_niceness"] == "0"
    # an operator's CLI against a remote SuperLink starts no Ray: nothing added
    remote = FlwrCli(tmp_path / "remote", "127.0.0.1:9093", ROOT / "README.md")
    assert "RAY_worker_niceness" not in remote.env()
    monkeypatch.setenv("RAY_worker_niceness", "5")  # the user's value wins
    assert local.env()["RAY_worker_niceness"] == "5"
