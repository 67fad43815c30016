"""The deployment tests' harness: the experiment, the ``fedpriv`` processes of a federation on
loopback (server, devices, runs) and the check that a test leaves none of them behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path


def experiment_toml(
    name: str,
    *,
    seed: int = 3,
    rounds: int = 2,
    num_clients: int = 3,
    round_timeout_s: int = 240,
    federation_extra: str = "",
    encryption_extra: str = "",
) -> str:
    """The deployment tests' experiment: digits over ``num_clients`` devices, logistic
    regression, record-level DP with a fixed noise multiplier, BFV."""
    return f"""\
name = "{name}"
seed = {seed}
rounds = {rounds}

[data]
dataset = "digits"
partitioner = "iid"

[federation]
num_clients = {num_clients}
fraction_train = 1.0
fraction_evaluate = 0.0
{federation_extra}round_timeout_s = {round_timeout_s}

[train]
model = "logreg"
local_epochs = 1
batch_size = 32
learning_rate = 0.5

[privacy]
mode = "record"
noise_multiplier = 1.0
max_epsilon = 50.0
accountant = "rdp"

[encryption]
scheme = "bfv"
{encryption_extra}"""


FLOWER_NAMES = (
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "flwr-serverapp",
    "flwr-clientapp",
    "fedpriv.deploy.clientapp",
    "nginx",  # the server's proxy (its title names its folder under the test's root)
)


# ----------------------------------------------------------------------------- process harness
@dataclass
class Cli:
    """A long-running ``fedpriv`` command in its own process group."""

    name: str
    args: list[str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str], cwd: Path) -> Cli:
        fh = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "fedpriv.cli.main", *self.args],
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        fh.close()
        return self

    @property
    def pgid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen is None:
            return
        self.signal_group(signal.SIGCONT)
        self.signal_group(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.popen.wait(10)
        # children of the group that outlived the leader
        self.signal_group(signal.SIGKILL)

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""


def wait_for(pred, timeout: float, what: str, interval: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _proc_refs(pid: int) -> tuple[str, str]:
    try:
        cmd = (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "", ""
    return cmd, cwd


def leftover_processes(root: Path, marker: str = "") -> list[tuple[int, str]]:
    """Flower/fedpriv processes whose command line or working directory is under ``root``, or
    whose environment carries this test's ``FEDPRIV_TEST_MARK``."""
    out = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        cmd, cwd = _proc_refs(int(entry.name))
        if not cmd:
            continue
        try:
            state = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue
        mine = str(root) in cmd or cwd.startswith(str(root))
        if not mine and marker:
            try:
                mine = (
                    f"FEDPRIV_TEST_MARK={marker}".encode()
                    in Path(f"/proc/{entry.name}/environ").read_bytes()
                )
            except OSError:
                mine = False
        if mine and (any(n in cmd for n in FLOWER_NAMES) or "fedpriv" in cmd):
            out.append((int(entry.name), cmd[:200]))
    return out


def serverapp_pids(root: Path) -> list[int]:
    """Running flwr-serverapp processes of this test's SuperLink."""
    return [pid for pid, cmd in leftover_processes(root) if "flwr-serverapp" in cmd]


def kill_leftovers(root: Path, marker: str = "") -> list[tuple[int, str]]:
    left = leftover_processes(root, marker)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return left


def fedpriv(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def free_port() -> int:
    from fedpriv.deploy.processes import free_port as fp

    return fp()


def client_cli(
    root: Path,
    port: int,
    i: int,
    suffix: str = "",
    *,
    seed: int | None = 11,
    num_partitions: int = 3,
    connect_timeout_s: int = 90,
    extra: tuple[str, ...] = (),
) -> Cli:
    """``fedpriv client start`` for device ``i`` of ``fed/`` (``seed``: reproducible DP
    randomness, so a run can be compared with a simulation; tests only: every record says so and
    the report marks the run not private)."""
    return Cli(
        f"client-{i}{suffix}",
        [
            "client",
            "start",
            "--superlink",
            f"127.0.0.1:{port}",
            "--bundle",
            str(root / "fed" / "clients" / f"client-{i}"),
            "--state-dir",
            str(root / f"state-{i}"),
            "--partition-id",
            str(i),
            "--num-partitions",
            str(num_partitions),
            "--connect-timeout",
            str(connect_timeout_s),
            *([] if seed is None else ["--insecure-test-seed", str(seed)]),
            *extra,
        ],
        root / f"client-{i}.out",
    )


def connected(cli: Cli, count: int = 1) -> bool:
    if not cli.alive():
        raise AssertionError(f"{cli.name} exited early:\n{cli.text()[-3000:]}")
    return cli.text().count("connected to") >= count


def warm_log(root: Path, i: int) -> str:
    p = root / f"state-{i}" / "logs" / "warm.log"
    return p.read_text(errors="replace") if p.exists() else ""


def deploy_env(root: Path) -> tuple[dict[str, str], str]:
    """The environment of a deployment test's processes, and the marker every one carries."""
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "FEDPRIV_HOME": str(root / "fedpriv-home"),
        "PYTHONUNBUFFERED": "1",
        "FEDPRIV_TEST_MARK": marker,
    }
    return env, marker


def server_cli(
    root: Path,
    port: int,
    name: str = "server",
    *,
    state: str = "server-state",
    log: str = "server.out",
) -> Cli:
    """``fedpriv server start`` from the ``fed/server`` bundle on loopback ``port`` (as
    docs/deployment.md says, on loopback instead of 0.0.0.0)."""
    return Cli(
        name,
        [
            "server",
            "start",
            "--bundle",
            "fed/server",
            "--address",
            f"127.0.0.1:{port}",
            "--state-dir",
            state,
        ],
        root / log,
    )


def start_server(
    root: Path, port: int, env: dict[str, str], count: int = 1, suffix: str = ""
) -> Cli:
    """Start the server; wait until its SuperLink is ready (the ``count``-th time in its log)."""
    server = server_cli(root, port, f"server{suffix}").start(env, root)
    wait_for(
        lambda: server.text().count("SuperLink ready") >= count or not server.alive(),
        120,
        "the SuperLink",
    )
    assert server.alive(), server.text()[-3000:]
    return server


def stop_all(procs: list[Cli], root: Path, marker: str) -> None:
    """Stop every process a test started (all at once: each CLI stops its own children), then
    fail if a Flower or fedpriv process of the test is still running after 15 s."""
    for p in procs:
        if p.alive():
            p.signal_group(signal.SIGCONT)
            p.signal_group(signal.SIGTERM)
    for p in reversed(procs):
        p.stop()
    deadline = time.monotonic() + 15  # Flower's daemons take a moment after a clean stop
    while leftover_processes(root, marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = kill_leftovers(root, marker)
    assert not left, f"processes left behind: {left}"


def run_cli(root: Path, superlink: str, config: Path, run_dir: Path, timeout_s: int = 600) -> Cli:
    """``fedpriv run`` of ``config`` against the SuperLink at ``superlink`` (output in
    ``run.out``)."""
    return Cli(
        "run",
        [
            "run",
            "--superlink",
            superlink,
            "--bundle",
            "fed/server",
            "--config",
            str(config),
            "--out",
            str(run_dir),
            "--server-state",
            "server-state",
            "--node-wait",
            "120",
            "--timeout",
            str(timeout_s),
        ],
        root / "run.out",
    )


def server_side_files(root: Path, run_dir: Path, *more: Path) -> list[Path]:
    """Every file the server side holds: its bundle and state, the run folder, its logs."""
    bases = [root / "fed" / "server", root / "server-state", run_dir, root / "server.out"]
    bases += [root / "run.out", *more]
    return [p for b in bases for p in ([b] if b.is_file() else sorted(b.rglob("*"))) if p.is_file()]
