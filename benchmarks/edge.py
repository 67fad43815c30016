"""Edge footprint: peak memory and CPU time of one client's rounds, in a fresh process.

One process plays one client of the default experiment (the largest of the 10 digits
partitions, 184 examples) and runs the ClientApp's real handlers for two rounds through the
in-process grid of ``benchmarks/round.py``: round 1 (plans the DP noise, trains, encrypts, then
evaluates) and round 2 (decrypts the global model, trains, encrypts, evaluates). The one-client
server lives in the same process; its share (one BFV addition per round) is reported and is
negligible. Memory is the process's peak RSS (VmHWM), with the RSS after the imports (Python,
torch, Opacus, TenSEAL, Flower) and after loading and partitioning the data (scikit-learn,
Hugging Face datasets, flwr-datasets) shown separately; CPU time is user+system of the process.

Settings: the default (DP + BFV) and plaintext non-private FedAvg as the baseline, each in its
own fresh process. Target: peak memory under 400 MB for the default.

Another measurement (the deployment guide) covers a real ``flower-supernode`` process; this one
is the ClientApp's work alone.

Run: ``python -m benchmarks.edge``.
"""

from __future__ import annotations

import argparse
import json
import time

from benchmarks._common import MIB, hwm_bytes, print_table, rss_bytes, run_worker, write_json

SETTINGS: dict[str, list[str]] = {
    "DP + BFV (default)": [],
    "plaintext, no DP": ["privacy.mode=off", "encryption.scheme=off"],
}
LIMIT_MB = 400


def worker(name: str) -> None:
    import resource

    start_rss = rss_bytes()
    t0 = time.perf_counter()
    import warnings

    import flwr.clientapp  # noqa: F401
    import opacus  # noqa: F401
    import tenseal  # noqa: F401
    import torch

    import fedpriv.apps.client  # noqa: F401

    warnings.filterwarnings("ignore")
    import_rss, import_s = rss_bytes(), time.perf_counter() - t0
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    from benchmarks.round import run_setting
    from fedpriv.config import load_config
    from fedpriv.data import load_dataset
    from fedpriv.runs.prepare import partition_sizes

    cfg = load_config(None, SETTINGS[name])
    train, _ = load_dataset(cfg.data.dataset, seed=cfg.seed)
    sizes = partition_sizes(cfg, train)
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    data_rss = rss_bytes()  # + scikit-learn, Hugging Face datasets, flwr-datasets
    res = run_setting(SETTINGS[name], rounds=2, partitions=[largest])
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    rounds = res["rounds"]
    print(
        json.dumps(
            {
                "setting": name,
                "client_partition": largest,
                "client_examples_total": sizes[largest],
                "torch_threads": torch.get_num_threads(),
                "start_rss": start_rss,
                "import_rss": import_rss,
                "data_rss": data_rss,
                "import_s": import_s,
                "peak_hwm": hwm_bytes(),
                "cpu_s_total": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
                "round_cpu_s": [r["cpu_s"] for r in rounds],
                "round_wall_s": [r["wall_s"] for r in rounds],
                "round_server_s": [r["phases_s"].get("server aggregation", 0.0) for r in rounds],
                "round_phases_s": [r["phases_s"] for r in rounds],
                "bytes_up": [r["bytes_up"] for r in rounds],
                "bytes_down": [r["bytes_down"] for r in rounds],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(a.worker[0])
        return
    results = {name: run_worker("benchmarks.edge", [name]) for name in SETTINGS}
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                r["import_rss"] / MIB,
                r["data_rss"] / MIB,
                r["peak_hwm"] / MIB,
                r["peak_hwm"] / 1e6,
                r["round_cpu_s"][0],
                r["round_cpu_s"][1],
                r["round_server_s"][1] * 1e3,
                r["bytes_up"][1] / 1024,
                r["bytes_down"][1] / 1024,
            ]
        )
    print_table(
        "One client, default model (largest default partition), fresh process",
        [
            "setting",
            "RSS after imports MiB",
            "RSS after data libs MiB",
            "peak RSS MiB",
            "peak RSS MB",
            "CPU s round 1 (plans noise)",
            "CPU s round 2",
            "of which server ms",
            "KiB up / round",
            "KiB down / round",
        ],
        rows,
    )
    d = results["DP + BFV (default)"]
    peak_mb = d["peak_hwm"] / 1e6
    print(f"target: peak {peak_mb:.0f} MB (< {LIMIT_MB} MB)")
    write_json(
        "edge",
        {
            "results": results,
            "target": {"peak_mb": peak_mb, "limit_mb": LIMIT_MB, "met": peak_mb < LIMIT_MB},
        },
    )


if __name__ == "__main__":
    main()
