"""Ctrl-C through the real CLI, in a terminal's way: SIGINT to the whole process group.

The first Ctrl-C stops the run within 10 s, exits 130 without a traceback, leaves a run folder
that ``--resume`` completes, and never resets or loses a client's epsilon; a second Ctrl-C quits
at once. No Ray or Flower process is left behind (every process the command started carries
this test's ``FEDPRIV_TEST_MARK`` in its environment).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from fedpriv.privacy import ClientPrivacyState, read_chain, verify_chain

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SMALL = [
    "rounds=3",
    "federation.num_clients=3",
    "train.model=logreg",
    "train.local_epochs=1",
    "privacy.noise_multiplier=1.0",
    "privacy.accountant=rdp",
]


def marked(mark: str) -> list[str]:
    """Every live process whose environment carries ``mark``."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            if f"FEDPRIV_TEST_MARK={mark}".encode() not in (d / "environ").read_bytes():
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            if state != "Z":
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{d.name} {cmd[:120]}")
        except OSError:
            continue
    return found


def no_process_left(mark: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


class Run:
    """``fedpriv simulate ...`` in its own process group, like a command in a terminal."""

    def __init__(self, args: list[str], tmp: Path, mark: str) -> None:
        self.out = open(tmp / f"out-{uuid.uuid4().hex[:6]}.txt", "w+b")  # noqa: SIM115
        self.err = open(tmp / f"err-{uuid.uuid4().hex[:6]}.txt", "w+b")  # noqa: SIM115
        env = {**os.environ, "FEDPRIV_TEST_MARK": mark, "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "fedpriv.cli.main", *args],
            stdout=self.out,
            stderr=self.err,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def ctrl_c(self) -> None:
        os.killpg(self.p.pid, signal.SIGINT)

    def interrupt(self, presses: int = 1, between_s: float = 0.3) -> tuple[int, float]:
        """Press Ctrl-C ``presses`` times; the exit status, and seconds from the last press to
        the exit (at most 30)."""
        for _ in range(presses - 1):
            self.ctrl_c()
            time.sleep(between_s)
        t0 = time.monotonic()
        self.ctrl_c()
        rc = self.p.wait(30)
        return rc, time.monotonic() - t0

    def text(self) -> tuple[str, str]:
        for f in (self.out, self.err):
            f.flush()
            f.seek(0)
        return (
            self.out.read().decode(errors="replace"),
            self.err.read().decode(errors="replace"),
        )

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(10)


def wait_for_round(run_dir: Path, n: int, run: Run, timeout: float = 420) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cp = run_dir / "checkpoint.json"
        if cp.exists() and json.loads(cp.read_text())["round"] >= n:
            return
        assert run.p.poll() is None, run.text()
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of round {n} within {timeout:.0f}s")


def client_epsilons(run_dir: Path) -> dict[str, float]:
    return {
        p.parent.name: ClientPrivacyState.from_json(p.read_text()).epsilon()
        for p in (run_dir / "clients").glob("*/privacy_state.json")
    }


def simulate_args(run_dir: Path, *extra: str) -> list[str]:
    args = ["simulate", "--out", str(run_dir), *extra]
    for o in SMALL:
        args += ["--set", o]
    return args


def test_ctrl_c_stops_within_10s_and_resume_completes_the_run(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    with Run(simulate_args(run_dir), tmp_path, mark) as run:
        wait_for_round(run_dir, 1, run)
        time.sleep(1.0)  # into round 2
        rc, stopped_in = run.interrupt()
    out, err = run.text()
    assert rc == 130, (out, err)
    assert stopped_in < 10.0, f"took {stopped_in:.1f}s to stop"
    assert "Traceback" not in err and f"--resume --out {run_dir}" in err, err
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"
    spent = client_epsilons(run_dir)
    assert spent and all(e > 0 for e in spent.values())

    resumed = subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", "simulate", "--resume", "--out", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "FEDPRIV_TEST_MARK": mark},
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    assert [r["round"] for r in m["rounds"]] == [1, 2, 3] and m["resumed"]
    # Never reset, never lost: every client ends at least where it was when interrupted.
    final = client_epsilons(run_dir)
    for cid, e in spent.items():
        assert final[cid] >= e, (cid, e, final[cid])
    assert {cid: c["epsilon"] for cid, c in m["rounds"][-1]["clients"].items()} == final
    verify_chain(read_chain(run_dir / "privacy_ledger.jsonl"))
    check = subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", "report", "verify", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert check.returncode == 0, check.stdout[-3000:]
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"


def test_a_second_ctrl_c_quits_at_once_without_a_traceback(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex
    run_dir = tmp_path / "run"
    with Run(simulate_args(run_dir), tmp_path, mark) as run:
        wait_for_round(run_dir, 1, run)
        rc, quit_in = run.interrupt(presses=2, between_s=0.3)
    out, err = run.text()
    assert rc == 130, (out, err)
    assert quit_in < 3.0, f"took {quit_in:.1f}s to quit"
    assert "Traceback" not in err and "quitting now" in err, err
    assert not (left := no_process_left(mark)), f"processes left behind: {left}"
    # The last complete round is still a restart point.
    assert json.loads((run_dir / "checkpoint.json").read_text())["round"] >= 1
