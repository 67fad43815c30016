"""A distributed-DP run end to end: wall time, time per round, CPU time and where it goes.

Runs ``simulations/mnist/distributed-5k.toml`` (MNIST-5k, 10 clients, model ``cnn``, BFV,
epsilon 3, one DP-SGD step per round) for ``--rounds`` rounds (default 200) on Flower's simulation
engine (Ray, 2 workers), exactly as ``fedpriv simulate`` does, and reports

* the wall time of the whole run (key dealing, Ray start, the rounds, the key holder's held-out
  evaluation every 10 rounds, the signed report) and of the rounds alone;
* the time per round (median, 90th percentile) as the server saw it;
* the CPU time of the whole process tree (driver, raylet, workers), sampled from /proc: on a
  shared machine wall time is inflated by other work, while CPU seconds / 2 bounds what 2
  dedicated cores would need;
* per round, what the clients spent computing the gradient and encrypting, and the server's
  aggregation (the rest: decrypting and applying the aggregate, the epsilon, persisting state,
  signing, Flower and Ray).

Target (issue 12): 200 rounds in under 10 minutes on 2 cores.

Run: ``python -m benchmarks.distributed [--rounds 200]`` (needs ``../shared/data/mnist``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import ROOT, SHARED_MNIST, print_table, write_json

CONFIG = ROOT / "simulations" / "mnist" / "distributed-5k.toml"
_TICK = os.sysconf("SC_CLK_TCK")


def _descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except (OSError, ValueError, IndexError):
        return -1.0


class CpuSampler:
    """Cumulative CPU seconds of this process tree (each process's last reading is kept)."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for p in _descendants(os.getpid()):
            c = _cpu_seconds(p)
            if c >= 0:
                self.seen[p] = max(self.seen.get(p, 0.0), c)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def total(self) -> float:
        return sum(self.seen.values())


def run(rounds: int) -> dict[str, Any]:
    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    cfg = load_config(
        CONFIG,
        [f'data.dataset="mnist:{SHARED_MNIST}"', f"rounds={rounds}", "simulation.eval_every=10"],
    )
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, CpuSampler() as cpu:
        t0 = time.perf_counter()
        res = simulate(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    m = res.metrics
    per_round = [float(r["seconds"]) for r in m["rounds"]]
    clients = [c for r in m["rounds"][1:] for c in r["clients"].values()]
    k = cfg.federation.num_clients
    train = statistics.fmean(float(c["train_seconds"] or 0) for c in clients) * k
    enc = statistics.fmean(float(c["encrypt_seconds"] or 0) for c in clients) * k
    agg = statistics.fmean(float(r["aggregate_seconds"]) for r in m["rounds"][1:])
    steady = sorted(per_round[1:])
    return {
        "rounds": rounds,
        "clients": k,
        "wall_seconds": wall,
        "rounds_seconds": sum(per_round),
        "first_round_seconds": per_round[0],
        "round_median_seconds": statistics.median(steady),
        "round_p90_seconds": steady[int(0.9 * (len(steady) - 1))],
        "cpu_seconds": cpu.total,
        "cpu_seconds_over_2_cores": cpu.total / 2,
        "client_gradient_seconds_per_round": train,
        "client_encrypt_seconds_per_round": enc,
        "server_aggregate_seconds_per_round": agg,
        "final_accuracy": res.final_accuracy,
        "epsilon": max(
            (c.get("epsilon") or 0.0) for r in m["rounds"] for c in r["clients"].values()
        ),
        "load_average_start": load0,
        "load_average_end": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    r = run(args.rounds)
    print_table(
        f"Distributed DP, MNIST-5k, {r['clients']} clients, {r['rounds']} rounds",
        ["measure", "value"],
        [
            ["wall time, whole run (s)", r["wall_seconds"]],
            ["wall time, the rounds (s)", r["rounds_seconds"]],
            ["first round (s)", r["first_round_seconds"]],
            [
                "round, median / p90 (s)",
                f"{r['round_median_seconds']:.2f} / {r['round_p90_seconds']:.2f}",
            ],
            ["CPU time, process tree (s)", r["cpu_seconds"]],
            ["CPU time / 2 cores (s)", r["cpu_seconds_over_2_cores"]],
            ["per round: clients' gradients (CPU s)", r["client_gradient_seconds_per_round"]],
            ["per round: clients' encryption (CPU s)", r["client_encrypt_seconds_per_round"]],
            ["per round: server aggregation (s)", r["server_aggregate_seconds_per_round"]],
            ["final test accuracy", r["final_accuracy"]],
            ["epsilon", r["epsilon"]],
            [
                "load average start / end",
                f"{r['load_average_start'][0]:.1f} / {r['load_average_end'][0]:.1f}",
            ],
        ],
    )
    write_json("distributed", r)


if __name__ == "__main__":
    main()
