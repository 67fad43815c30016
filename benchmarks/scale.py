"""Scale: many clients on Flower's simulation engine (Ray) on this machine.

Runs, each in a fresh process through ``fedpriv.simulation.simulate`` with the default DP+BFV
setup and the default model on digits:

* ``100 clients``: 10 sampled per round, 10 rounds, 10 evaluate per round;
* ``1000 clients``: 20 sampled per round, 1 round, 20 evaluate;
* ``1000 clients, 1 worker``: the same with ``simulation.num_cpus_per_client = 2``, so Ray runs
  one worker instead of two: memory follows the number of workers, not of clients.

All split the 1,437 digits training images IID (14 or 15 per client at 100 clients, one or two
at 1,000): the default Dirichlet(0.5) split cannot give every client the minimum partition size
it asks for at these client counts.

Each run samples the memory of its whole process tree (driver, Ray's GCS and raylet, workers)
every 0.5 s: the sum of RSS (counts shared library pages once per process, an upper bound) and
the sum of PSS (shares them out). Reported: wall time (Ray start included), rounds per minute,
seconds per round, peak memory, memory per client and per worker.

Targets: each run under 5 minutes; the 1000-client run under 8 GiB; memory grows with
concurrent workers, not with clients.

Run: ``python -m benchmarks.scale``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import MIB, MemorySampler, print_table, run_worker, write_json

RUNS: dict[str, list[str]] = {
    "100 clients, 10/round, 10 rounds": [
        "federation.num_clients=100",
        "federation.fraction_train=0.1",
        "federation.fraction_evaluate=0.1",
        "data.partitioner=iid",
        "rounds=10",
    ],
    "1000 clients, 20/round, 1 round": [
        "federation.num_clients=1000",
        "federation.fraction_train=0.02",
        "federation.fraction_evaluate=0.02",
        "data.partitioner=iid",
        "rounds=1",
    ],
    "1000 clients, 20/round, 1 round, 1 worker": [
        "federation.num_clients=1000",
        "federation.fraction_train=0.02",
        "federation.fraction_evaluate=0.02",
        "data.partitioner=iid",
        "rounds=1",
        "simulation.num_cpus_per_client=2",
    ],
}


def worker(name: str) -> None:
    """Fresh process: one simulation with the memory sampler running."""
    import logging

    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = load_config(None, [*RUNS[name], "name=bench-scale"])
    with (
        tempfile.TemporaryDirectory(prefix="fedpriv-bench-scale-") as tmp,
        MemorySampler(0.5) as mem,
    ):
        t0 = time.perf_counter()
        res = simulate(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    rounds = res.metrics.get("rounds", [])
    clients = [c for r in rounds for c in (r.get("clients") or {}).values()]
    train_s = [c.get("train_seconds") or 0.0 for c in clients]
    encrypt_s = [c.get("encrypt_seconds") or 0.0 for c in clients]
    print(
        json.dumps(
            {
                "name": name,
                "overrides": RUNS[name],
                "wall_s": wall,
                "round_seconds": [r.get("seconds") for r in rounds],
                "accepted": [r.get("accepted") for r in rounds],
                "final_accuracy": res.final_accuracy,
                "peak_rss_sum": mem.peak_rss,
                "peak_pss_sum": mem.peak_pss,
                "peak_processes": mem.peak_procs,
                "samples": mem.samples,
                "client_train_seconds": train_s,
                "client_encrypt_seconds": encrypt_s,
                "aggregate_seconds": [r.get("aggregate_seconds") for r in rounds],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    ap.add_argument("--only", choices=list(RUNS), action="append", help="run only these")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0])
        return
    results: dict[str, Any] = {}
    for name in a.only or list(RUNS):
        print(f"{name} ...", flush=True)
        try:
            r = run_worker("benchmarks.scale", [name], timeout=1800)
        except (RuntimeError, OSError) as e:
            print(f"  failed: {str(e)[-1500:]}", flush=True)
            continue
        results[name] = r
        print(
            f"  {r['wall_s']:.0f} s, peak PSS {r['peak_pss_sum'] / MIB:,.0f} MiB "
            f"(RSS sum {r['peak_rss_sum'] / MIB:,.0f} MiB, {r['peak_processes']} processes)",
            flush=True,
        )
    rows = []
    for name, r in results.items():
        n_clients = int(next(o for o in r["overrides"] if "num_clients" in o).split("=")[1])
        rs = [s for s in r["round_seconds"] if s is not None]
        rows.append(
            [
                name,
                r["wall_s"],
                len(rs) / (r["wall_s"] / 60),
                sum(rs) / max(len(rs), 1),
                r["peak_pss_sum"] / MIB,
                r["peak_rss_sum"] / MIB,
                r["peak_pss_sum"] / n_clients / 1024,
                r["peak_processes"],
                r["final_accuracy"],
            ]
        )
    print_table(
        "Simulation at scale (2 cores; DP + BFV; default model on digits)",
        [
            "run",
            "wall s",
            "rounds/min",
            "s/round",
            "peak PSS MiB",
            "peak RSS-sum MiB",
            "PSS KiB/client",
            "processes",
            "accuracy",
        ],
        rows,
    )
    targets: dict[str, Any] = {}
    k100 = results.get("100 clients, 10/round, 10 rounds")
    k1000 = results.get("1000 clients, 20/round, 1 round")
    k1000w1 = results.get("1000 clients, 20/round, 1 round, 1 worker")
    if k100:
        targets["100_clients_wall_s"] = k100["wall_s"]
    if k1000:
        targets["1000_clients_wall_s"] = k1000["wall_s"]
        targets["1000_clients_peak_pss_gib"] = k1000["peak_pss_sum"] / 2**30
        targets["1000_clients_peak_rss_sum_gib"] = k1000["peak_rss_sum"] / 2**30
    if k100 and k1000:
        targets["marginal_pss_per_client_kib"] = (
            (k1000["peak_pss_sum"] - k100["peak_pss_sum"]) / 900 / 1024
        )
    if k1000 and k1000w1:
        targets["pss_per_extra_worker_mib"] = (
            k1000["peak_pss_sum"] - k1000w1["peak_pss_sum"]
        ) / MIB
    print("targets:", json.dumps(targets, indent=1))
    write_json("scale", {"runs": results, "targets": targets})


if __name__ == "__main__":
    main()
