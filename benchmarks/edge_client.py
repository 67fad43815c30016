"""Edge client on the deployment engine: peak memory and CPU time per round of a real SuperNode.

Runs the default experiment (``simulations/default.toml``: 10 clients on digits, Dirichlet 0.5,
CNN, DP-SGD with PRV planning to epsilon 8, BFV) as a real deployment on loopback: ``fedpriv
keys init``, ``fedpriv server start``, ten ``fedpriv client start`` (each a
``flower-supernode`` with its warm ClientApp server), ``fedpriv run`` for ``--rounds`` rounds.
Every 0.1 s it samples each client's whole process tree (the ``fedpriv client start`` process,
``flower-supernode``, ``flower-superexec``, the ``flwr-clientapp`` shim and the ClientApp
processes, the warm server and its forked children) from ``/proc``:

* CPU time: user + system of every process seen in the tree (a process's last sample counts);
  per round = the growth between the server's round records; idle = while connected, no run.
* Memory: the tree's summed RSS (counts pages a forked child shares with the warm server
  twice), its summed PSS (shared pages split between the processes sharing them: the honest
  total), and the largest single process RSS, each at its peak.

Mode ``--cold`` starts the clients without the warm server (a fresh interpreter per message).
The machine is shared by the server and all ten clients, so wall times are not edge figures;
CPU time and memory per client are.

Run: ``python -m benchmarks.edge_client [--rounds 2] [--cold]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import MIB, print_table, write_json

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for e in Path("/proc").iterdir():
        if not e.name.isdigit():
            continue
        try:
            rest = (e / "stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        kids.setdefault(int(rest[1]), []).append(int(e.name))
    return kids


def _tree(root: int, kids: dict[int, list[int]]) -> list[int]:
    out, todo = [root], [root]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cpu_rss(pid: int) -> tuple[float, int] | None:
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    if rest[0] == "Z":
        return None
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK  # utime + stime
    return cpu, int(rest[21]) * PAGE


def _pss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeSampler:
    """Samples the process trees under some root pids (one per client)."""

    def __init__(self, roots: dict[str, int], interval: float = 0.1) -> None:
        self.roots = roots
        self.interval = interval
        self.cpu: dict[str, dict[int, float]] = {k: {} for k in roots}
        self.peak_rss: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_pss: dict[str, int] = dict.fromkeys(roots, 0)
        self.peak_proc_rss: dict[str, int] = dict.fromkeys(roots, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._n = 0

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def total_cpu(self, name: str) -> float:
        return sum(self.cpu[name].values())

    def _run(self) -> None:
        while not self._stop.is_set():
            kids = _children_map()
            self._n += 1
            for name, root in self.roots.items():
                rss_sum, pss_sum = 0, 0
                for pid in _tree(root, kids):
                    got = _cpu_rss(pid)
                    if got is None:
                        continue
                    cpu, rss = got
                    self.cpu[name][pid] = max(cpu, self.cpu[name].get(pid, 0.0))
                    rss_sum += rss
                    self.peak_proc_rss[name] = max(self.peak_proc_rss[name], rss)
                    if self._n % 5 == 0:
                        pss_sum += _pss(pid)
                self.peak_rss[name] = max(self.peak_rss[name], rss_sum)
                if self._n % 5 == 0:
                    self.peak_pss[name] = max(self.peak_pss[name], pss_sum)
            time.sleep(self.interval)


def _cli(args: list[str], env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    fh = open(log, "ab")  # noqa: SIM115 - handed to the child
    p = subprocess.Popen(
        [sys.executable, "-m", "fedpriv.cli.main", *args],
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    fh.close()
    return p


def _wait_text(path: Path, text: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"{path.name}: exited\n{path.read_text(errors='replace')[-2000:]}")
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {text!r} in {path}")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs:  # stragglers of the groups
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)


def _partition_sizes(rounds: int, clients: int) -> dict[str, int]:
    """Training examples per client (the server does not learn them under encryption)."""
    from fedpriv.config import load_config
    from fedpriv.data import load_dataset
    from fedpriv.runs.prepare import partition_sizes

    cfg = load_config(None, [f"rounds={rounds}", f"federation.num_clients={clients}"])
    d = cfg.data
    train, _ = load_dataset(d.dataset, holdout_fraction=d.holdout_fraction, seed=cfg.seed)
    return {f"client-{i}": n for i, n in enumerate(partition_sizes(cfg, train))}


def measure(rounds: int, cold: bool, clients: int, work: Path) -> dict[str, Any]:
    """Deploy the default experiment on loopback and sample every client's process tree."""
    from fedpriv.deploy.processes import free_port

    env = {**os.environ, "FEDPRIV_HOME": str(work / "home"), "PYTHONUNBUFFERED": "1"}
    sets = ["--set", f"rounds={rounds}", "--set", f"federation.num_clients={clients}"]
    r = subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", "keys", "init", "--out", "fed", *sets],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    if r.returncode:
        raise RuntimeError(r.stderr)
    port = free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        server = _cli(
            [
                "server",
                "start",
                "--bundle",
                "fed/server",
                "--address",
                f"127.0.0.1:{port}",
                "--state-dir",
                "server",
            ],
            env,
            work,
            work / "server.out",
        )
        procs.append(server)
        _wait_text(work / "server.out", "SuperLink ready", 120, server)
        roots: dict[str, int] = {}
        for i in range(clients):
            args = [
                "client", "start", "--superlink", f"127.0.0.1:{port}",
                "--bundle", f"fed/clients/client-{i}", "--state-dir", f"c{i}",
                "--partition-id", str(i), "--num-partitions", str(clients),
                "--connect-timeout", "300",
            ]  # fmt: skip
            if cold:
                args.append("--cold")
            p = _cli(args, env, work, work / f"c{i}.out")
            procs.append(p)
            roots[f"client-{i}"] = p.pid
        sampler = TreeSampler(roots).start()
        for i in range(clients):
            _wait_text(work / f"c{i}.out", "connected to", 300, procs[1 + i])
        if not cold:  # let the warm servers finish importing before the idle window
            for i in range(clients):
                _wait_text(work / f"c{i}" / "logs" / "warm.log", "ready", 300, procs[1 + i])
        time.sleep(15)  # Flower's SuperExec finishes starting before the idle window
        startup = {n: sampler.total_cpu(n) for n in roots}
        time.sleep(30)
        idle = {n: (sampler.total_cpu(n) - startup[n]) / 30 * 60 for n in roots}
        marks = [{n: sampler.total_cpu(n) for n in roots}]
        run = _cli(
            ["run", "--superlink", f"127.0.0.1:{port}", "--bundle", "fed/server", *sets,
             "--out", "run", "--server-state", "server", "--timeout", "3600"],
            env,
            work,
            work / "run.out",
        )  # fmt: skip
        procs.append(run)
        seen = 0
        t_run = time.monotonic()
        while run.poll() is None:
            try:
                n = len(json.loads((work / "run" / "metrics.json").read_text())["rounds"])
            except (OSError, ValueError, KeyError):
                n = 0
            if n > seen:
                seen = n
                marks.append({c: sampler.total_cpu(c) for c in roots})
            time.sleep(0.5)
        wall = time.monotonic() - t_run
        if run.returncode:
            raise RuntimeError((work / "run.out").read_text()[-3000:])
        sampler.stop()
        metrics = json.loads((work / "run" / "metrics.json").read_text())
    finally:
        _stop(procs)
    per_round = {n: [marks[k + 1][n] - marks[k][n] for k in range(len(marks) - 1)] for n in roots}
    examples = _partition_sizes(rounds, clients)
    return {
        "mode": "cold (a process per message)" if cold else "warm (fork per message)",
        "clients": clients,
        "rounds": rounds,
        "run_wall_s": wall,
        "round_seconds": [r["seconds"] for r in metrics["rounds"]],
        "per_client": {
            n: {
                "train_examples": examples.get(n),
                "startup_cpu_s": startup[n],
                "idle_cpu_s_per_min": idle[n],
                "cpu_s_per_round": per_round[n],
                "peak_tree_rss_mib": sampler.peak_rss[n] / MIB,
                "peak_tree_pss_mib": sampler.peak_pss[n] / MIB,
                "peak_process_rss_mib": sampler.peak_proc_rss[n] / MIB,
            }
            for n in roots
        },
    }


def summarize(res: dict[str, Any]) -> list[Any]:
    pc = res["per_client"].values()
    rounds = [x for c in pc for x in c["cpu_s_per_round"]]
    return [
        res["mode"],
        statistics.median(c["startup_cpu_s"] for c in pc),
        statistics.median(c["idle_cpu_s_per_min"] for c in pc),
        statistics.median(rounds),
        max(rounds),
        statistics.median(c["peak_tree_pss_mib"] for c in pc),
        max(c["peak_tree_pss_mib"] for c in pc),
        max(c["peak_tree_rss_mib"] for c in pc),
        max(c["peak_process_rss_mib"] for c in pc),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="only the cold mode")
    ap.add_argument("--both", action="store_true", help="warm and cold")
    args = ap.parse_args()
    modes = [False, True] if args.both else [args.cold]
    results = []
    for cold in modes:
        with tempfile.TemporaryDirectory(prefix="fedpriv-edge-") as tmp:
            results.append(measure(args.rounds, cold, args.clients, Path(tmp)))
    print_table(
        f"Edge client on the deployment engine (default experiment, {args.clients} SuperNodes on one host)",
        [
            "mode",
            "startup CPU s",
            "idle CPU s/min",
            "CPU s/round (median)",
            "CPU s/round (max)",
            "peak PSS MiB (median)",
            "peak PSS MiB (max)",
            "peak tree RSS MiB (max)",
            "largest process RSS MiB",
        ],
        [summarize(r) for r in results],
    )
    write_json("edge_client", {"results": results})


if __name__ == "__main__":
    main()
