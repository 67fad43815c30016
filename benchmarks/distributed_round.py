"""Distributed-DP round: wall time of one round on Flower's simulation engine (Ray, 2 workers).

Distributed DP (``privacy.mode = "distributed"``) takes one central DP-SGD step per round: every
client computes its clipped gradient sum on its Poisson sample, adds its share of the
discrete-Gaussian noise and encrypts it; the server sums under BFV. Target: a round of 10
clients with BFV in at most 1.5 s wall on this 2-core machine.

Next to it the script measures the floor under any distributed-DP round (a setting the config
rejects is skipped with the reason): Flower/Ray messaging, encryption, aggregation and decryption, and a
one-step local round (``train.batch_size`` above every partition and one local epoch, so each
client takes exactly one optimizer step), once with plain SGD and once with record-level DP-SGD
(per-sample clipping and noise). Evaluation stays as configured (every client, every round).

Each setting is one simulation of ``--rounds`` rounds in a fresh process; round 1 (Ray start-up,
noise planning) is reported apart and the later rounds' median is the figure.

Run: ``python -m benchmarks.distributed_round`` (``--smoke``: 2 clients, 2 rounds, the floor only,
written to ``distributed_round_smoke.json``). The 200-round run of issue 12 is
``benchmarks.distributed``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import median, print_table, run_worker, write_json

TARGET_S = 1.5
BASE = ["federation.num_clients=10", "encryption.scheme=bfv"]
ONE_STEP = ["train.batch_size=4096", "train.local_epochs=1"]
SETTINGS: dict[str, list[str]] = {
    "distributed DP (one DP-SGD step, BFV)": [*BASE, "privacy.mode=distributed"],
    "floor: one plain SGD step + BFV": [*BASE, *ONE_STEP, "privacy.mode=off"],
    "floor: one DP-SGD step + BFV": [*BASE, *ONE_STEP, "privacy.mode=record"],
}
DISTRIBUTED = next(iter(SETTINGS))
SMOKE = ["federation.num_clients=2", "data.max_samples=300"]


def availability(overrides: list[str]) -> str:
    """'' when the config accepts ``overrides``, else why not."""
    from fedpriv.config import load_config
    from fedpriv.errors import ConfigError

    try:
        load_config(None, overrides)
    except ConfigError as e:
        return "; ".join(e.errors)[:500]
    return ""


def worker(overrides: list[str]) -> None:
    """Fresh process: one simulation; per-round seconds from the run's metrics."""
    import logging

    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = load_config(None, [*overrides, "name=bench-distributed"])
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-dist-") as tmp:
        t0 = time.perf_counter()
        res = simulate(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    rounds = res.metrics.get("rounds", [])
    print(
        json.dumps(
            {
                "overrides": overrides,
                "wall_s": wall,
                "round_seconds": [r.get("seconds") for r in rounds],
                "accepted": [r.get("accepted") for r in rounds],
                "final_accuracy": res.final_accuracy,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--smoke", action="store_true", help="2 clients, 2 rounds, the floor only")
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(json.loads(a.worker[0]))
        return
    rounds = 2 if a.smoke else a.rounds
    settings = {
        k: [*v, *(SMOKE if a.smoke else [])]
        for k, v in SETTINGS.items()
        if not a.smoke or k.startswith("floor: one plain")
    }
    results: dict[str, Any] = {}
    for name, overrides in settings.items():
        why = availability([*overrides, f"rounds={rounds}"])
        if why:
            results[name] = {"skipped": why, "overrides": overrides}
            print(f"{name}: skipped, the config rejects it ({why})", flush=True)
            continue
        print(f"{name}: {rounds} rounds on the Ray engine ...", flush=True)
        try:
            r = run_worker(
                "benchmarks.distributed_round", [json.dumps([*overrides, f"rounds={rounds}"])]
            )
        except (RuntimeError, OSError) as e:
            results[name] = {"error": str(e)[-1500:], "overrides": overrides}
            print(f"  failed: {str(e)[-600:]}", flush=True)
            continue
        rs = [s for s in r["round_seconds"] if s is not None]
        r["round1_s"] = rs[0] if rs else None
        r["later_round_s"] = median(rs[1:]) if len(rs) > 1 else None
        results[name] = r
    rows = []
    for name, r in results.items():
        if "skipped" in r or "error" in r:
            rows.append([name, "-", "-", "-", r.get("skipped") or "failed"])
        else:
            rows.append([name, r["round1_s"], r["later_round_s"], r["wall_s"], ""])
    print_table(
        "Distributed-DP round and its floor (Ray engine, 2 workers, 10 clients)",
        ["setting", "round 1 s", "later rounds s (median)", "whole run s", "note"],
        rows,
    )
    dist = results.get(DISTRIBUTED, {})
    floors = {
        k: v["later_round_s"]
        for k, v in results.items()
        if k.startswith("floor") and v.get("later_round_s") is not None
    }
    target: dict[str, Any] = {
        "limit_s": TARGET_S,
        "measured_s": dist.get("later_round_s"),
        "skipped": dist.get("skipped"),
        "floor_s": floors,
        "met": dist.get("later_round_s") is not None and dist["later_round_s"] <= TARGET_S,
    }
    if target["measured_s"] is None:
        print(
            f"target: distributed-DP round not measured "
            f"({target['skipped'] or ('not run' if DISTRIBUTED not in results else 'failed')}); "
            f"floor today: {json.dumps(floors)}"
        )
    else:
        print(f"target: distributed-DP round {target['measured_s']:.2f} s (<= {TARGET_S} s)")
    write_json(
        "distributed_round_smoke" if a.smoke else "distributed_round",
        {"rounds": rounds, "results": results, "target": target},
    )


if __name__ == "__main__":
    main()
