"""Flower's own CLI: `flwr run .` in the project root, and `fedpriv simulate --engine flwr`.

* `flwr run .`: a run whose ServerApp fails ends `finished:failed` and says so in its log
  (out of the box success: the README's `flwr run .` in
  tests/integration/test_documented_commands.py). `flwr run` gets a private FLWR_HOME and ports
  (never the user's own local SuperLink) and nothing else: runtime dependency installation stays
  on, as for a new user.
* `fedpriv simulate --engine flwr`: Ctrl-C stops the run within 10 s with no Flower or Ray
  process left; `--engine flwr --resume` completes it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fedpriv.deploy.processes import free_port
from fedpriv.runs.flwr_cli import stop_processes_matching
from tests.e2e.test_interrupt import Run, no_process_left, wait_for_round

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _flwr(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["flwr", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _status(env: dict[str, str], run_id: str) -> str:
    res = _flwr(["list", "--run-id", run_id, "--format", "json"], env, 120)
    doc = json.loads(res.stdout[res.stdout.index("{") :])
    return str(doc["runs"][0]["status"])


def test_flwr_run_dot_reports_a_failed_run_as_failed(tmp_path: Path) -> None:
    """`flwr run .` exits 0 even when the ServerApp fails: the log says FAILED and why, and the
    run ends `finished:failed`. (A run that succeeds out of the box: the README's `flwr run .`
    in tests/integration/test_documented_commands.py.)"""
    mark = uuid.uuid4().hex
    home = tmp_path / "flwr-home"
    env = {
        k: v for k, v in os.environ.items() if k != "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"
    }
    env |= {
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
        "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        "FEDPRIV_TEST_MARK": mark,
    }
    try:
        bad = _flwr(
            ["run", ".", "--run-config", f'fedpriv-config="{tmp_path}/none.toml"', "--stream"],
            env,
            600,
        )
        text = bad.stdout + bad.stderr
        failed = re.search(r"Successfully started run (\d+)", text)
        assert failed and "fedpriv: run FAILED (ConfigError, exit code 2)" in text, text[-3000:]
        assert "none.toml: config file not found" in text
        assert _status(env, failed.group(1)) == "finished:failed"
    finally:
        stop_processes_matching(str(home))
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"


def test_engine_flwr_ctrl_c_then_resume(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    args = ["simulate", "--engine", "flwr", "--out", str(run_dir)]
    for o in (
        "rounds=3",
        "federation.num_clients=3",
        "train.model=logreg",
        "train.local_epochs=1",
        "privacy.noise_multiplier=1.0",
        "privacy.accountant=rdp",
    ):
        args += ["--set", o]
    with Run(args, tmp_path, mark) as run:
        wait_for_round(run_dir, 1, run)
        rc, stopped_in = run.interrupt()
    out, err = run.text()
    assert rc == 130, (out, err)
    assert stopped_in < 10.0, f"took {stopped_in:.1f}s to stop"
    assert "Traceback" not in err, err
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedpriv.cli.main",
            "simulate",
            "--engine",
            "flwr",
            "--resume",
            "--out",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "FEDPRIV_TEST_MARK": mark},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["engine"] == "flwr" and [r["round"] for r in m["rounds"]] == [1, 2, 3]
    assert m["resumed"] and m["rounds"][-1]["heldout_accuracy"] is not None
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"
