"""Scale: many clients on Flower's simulation engine (Ray) on this machine.

Target runs (``scale_60k``): the full MNIST training set (60,000 images, ``../shared/data/
mnist60k``, IDX) split IID over 100 and over 1,000 clients, 100 clients per round, model ``cnn``
(28x28 input, 20,490 parameters), default DP-SGD + BFV, 3 rounds each: the time of a round is
the median of rounds 2 and 3 (round 1 adds Ray's start-up, every worker loading MNIST and
partitioning it, and noise planning); the peak memory of the whole process tree must stay under
8 GiB and flat from 100 to 1,000 clients (same clients per round, ten times the federation).
Evaluation samples 10% of the clients per round (``fraction_evaluate``).

The earlier digits runs, each in a fresh process through ``fedpriv.simulation.simulate`` with the
default DP+BFV setup and the default model (``--only`` selects them):

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

Targets: a 60k round at 1,000 clients under 30 s and the process tree under 8 GiB, memory flat
from 100 to 1,000 clients (digits: each run under 5 minutes).

Run: ``python -m benchmarks.scale`` (the two 60k runs; ``--only NAME`` for any run, ``--smoke``:
digits over 20 clients, 2 rounds, written to ``scale_smoke.json``). Needs the MNIST-60k folder
(``FEDPRIV_SHARED_DATA`` or ``../shared/data``); without it the 60k runs are skipped.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import (
    MIB,
    SHARED_DATA,
    MemorySampler,
    median,
    print_table,
    read_json,
    run_worker,
    write_json,
)

MNIST60K = SHARED_DATA / "mnist60k"
_60K = [
    f"data.dataset=mnist:{MNIST60K}",
    "data.partitioner=iid",
    "train.model=cnn",
    "federation.fraction_evaluate=0.1",
    "rounds=3",
]
RUNS_60K: dict[str, list[str]] = {
    "mnist60k, 100 clients, 100/round, 3 rounds": [
        *_60K,
        "federation.num_clients=100",
        "federation.fraction_train=1.0",
    ],
    "mnist60k, 1000 clients, 100/round, 3 rounds": [
        *_60K,
        "federation.num_clients=1000",
        "federation.fraction_train=0.1",
    ],
}
SMOKE: dict[str, list[str]] = {
    "digits, 20 clients, 2 rounds (smoke)": [
        "federation.num_clients=20",
        "federation.fraction_train=0.2",
        "federation.fraction_evaluate=0.1",
        "data.partitioner=iid",
        "rounds=2",
    ]
}
RUNS: dict[str, list[str]] = {
    **RUNS_60K,
    **SMOKE,
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
    ap.add_argument("--smoke", action="store_true", help="digits over 20 clients, 2 rounds")
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0])
        return
    names = list(SMOKE) if a.smoke else a.only or list(RUNS_60K)
    if any(n in RUNS_60K for n in names) and not (MNIST60K / "train-images-idx3-ubyte.gz").exists():
        print(f"MNIST-60k not found at {MNIST60K}: the 60k runs are skipped", flush=True)
        names = [n for n in names if n not in RUNS_60K]
    results: dict[str, Any] = {}
    for name in names:
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
    if not a.smoke:
        # Keep the runs of earlier invocations that this one did not repeat (labelled with
        # their date): the 60k runs and the digits runs are measured separately.
        earlier = read_json("scale")
        for name, r in earlier.get("runs", {}).items():
            if name not in results:
                results[name] = {
                    "from_earlier_run": r.get("from_earlier_run", earlier.get("when")),
                    **r,
                }
        results = {n: results[n] for n in RUNS if n in results}
    rows = []
    for name, r in results.items():
        n_clients = int(next(o for o in r["overrides"] if "num_clients" in o).split("=")[1])
        rs = [s for s in r["round_seconds"] if s is not None]
        rows.append(
            [
                name,
                r["wall_s"],
                rs[0] if rs else float("nan"),
                median(rs[1:]) if len(rs) > 1 else float("nan"),
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
            "round 1 s",
            "later rounds s (median)",
            "peak PSS MiB",
            "peak RSS-sum MiB",
            "PSS KiB/client",
            "processes",
            "accuracy",
        ],
        rows,
    )
    targets: dict[str, Any] = {}
    a100, a1000 = (results.get(n) for n in RUNS_60K)
    if a1000:
        rs = [s for s in a1000["round_seconds"] if s is not None]
        targets["60k_round_s"] = median(rs[1:]) if len(rs) > 1 else None
        targets["60k_round1_s"] = rs[0] if rs else None
        targets["60k_peak_pss_gib"] = a1000["peak_pss_sum"] / 2**30
        targets["60k_peak_rss_sum_gib"] = a1000["peak_rss_sum"] / 2**30
    if a100 and a1000:
        targets["60k_memory_1000_vs_100"] = a1000["peak_pss_sum"] / a100["peak_pss_sum"]
        targets["60k_peak_pss_gib_100_clients"] = a100["peak_pss_sum"] / 2**30
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
    if a.smoke:
        write_json("scale_smoke", {"runs": results, "targets": targets})
        return
    write_json("scale", {"runs": results, "targets": targets})


if __name__ == "__main__":
    main()
