"""Run the project's Flower apps through Flower's own CLI (``flwr run .``) on a local SuperLink.

``flwr run`` returns 0 even when the ServerApp failed and leaves a detached ``flower-superlink``
behind (RESEARCH.md section 1). This wrapper uses a private ``FLWR_HOME``, reads the run's real
final status with ``flwr list --format json``, and always stops the SuperLink it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from fedpriv.errors import RunFailedError

__all__ = ["flwr_run_local", "stop_processes_matching"]


def _flwr(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("flwr")
    if exe is None:
        raise RunFailedError("the `flwr` command was not found; install flwr[simulation]")
    return subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout)


def _json_out(text: str) -> dict[str, Any]:
    start = text.find("{")
    if start < 0:
        raise RunFailedError(f"flwr printed no JSON: {text[-500:]}")
    return dict(json.loads(text[start:]))


def stop_processes_matching(marker: str) -> list[int]:
    """Terminate every process whose command line contains ``marker`` (and its children)."""
    victims: list[int] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            victims.append(int(d.name))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for pid in victims:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return victims


def flwr_run_local(
    project_dir: Path,
    *,
    config_path: Path | None,
    keys_dir: Path,
    run_dir: Path,
    num_supernodes: int,
    timeout: float = 1800.0,
    resume: bool = False,
) -> dict[str, Any]:
    """``flwr run`` the project on a private local SuperLink; return the run's status record."""
    home = Path(tempfile.mkdtemp(prefix="fedpriv-flwr-home-"))
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }
    try:
        cfg = _flwr(
            [
                "federation",
                "simulation-config",
                "@none/default",
                "--num-supernodes",
                str(num_supernodes),
            ],
            env,
            120,
        )
        if cfg.returncode != 0:
            raise RunFailedError(f"flwr federation simulation-config failed: {cfg.stderr[-800:]}")
        run_config = f'keys-dir="{keys_dir.resolve()}" run-dir="{run_dir.resolve()}"'
        if config_path is not None:
            run_config += f' fedpriv-config="{config_path.resolve()}"'
        if resume:
            run_config += " resume=true"
        started = _flwr(
            ["run", str(project_dir), "--run-config", run_config, "--format", "json"], env, 300
        )
        if started.returncode != 0:
            raise RunFailedError(
                f"flwr run could not submit the run: {(started.stdout + started.stderr)[-800:]}"
            )
        run_id = str(_json_out(started.stdout).get("run-id", ""))
        if not run_id:
            raise RunFailedError(f"flwr run returned no run id: {started.stdout[-800:]}")
        deadline = time.monotonic() + timeout
        while True:
            listed = _flwr(["list", "--run-id", run_id, "--format", "json"], env, 60)
            runs = _json_out(listed.stdout).get("runs", [])
            status = runs[0] if runs else {}
            if str(status.get("status", "")).startswith("finished"):
                break
            if time.monotonic() > deadline:
                _flwr(["stop", run_id], env, 60)
                raise RunFailedError(f"run {run_id} did not finish within {timeout:.0f}s")
            time.sleep(2)
        if status.get("status") != "finished:completed":
            details = str(status.get("status-details", ""))[:2000]
            raise RunFailedError(f"run {run_id} ended as {status.get('status')}: {details}")
        return dict(status)
    finally:
        stop_processes_matching(str(home))
        shutil.rmtree(home, ignore_errors=True)
