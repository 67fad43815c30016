"""Edge footprint: one device's peak memory and CPU time per round, in a process of its own.

The device is a fresh process that holds its own data (an IDX folder with the train and test
split of the largest default digits partition, as a device would keep its data) and runs the
ClientApp's real handlers (``handle_train``, ``handle_evaluate``) for two rounds: round 1 plans
the noise and its epsilon schedule, trains, encrypts and evaluates; round 2 also decrypts the
global model first. The server (the real :class:`EncryptedFedAvg`, one client, ``k_min`` 1)
runs in the parent process and reaches the device through a pipe carrying Flower's protobuf
bytes, so nothing the server imports or allocates is counted.

The device measures its imports one by one, in the order it needs them (RSS growth after each),
then its peak RSS (VmHWM) over the rounds, CPU time (user + system) per round, and which heavy
packages ended up loaded: nothing on the device path may import Ray, matplotlib, Hugging Face
``datasets``, flwr-datasets, scikit-learn or the report.

Settings: the default (record-level DP-SGD + BFV) and plaintext non-private FedAvg, each in its
own fresh device process. Target: peak RSS of the default under 400 MB.

Run: ``python -m benchmarks.edge`` (``--smoke``: one round, the default setting only, written
to ``edge_smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import MIB, ROOT, hwm_bytes, print_table, rss_bytes, write_json

SETTINGS: dict[str, list[str]] = {
    "DP + BFV (default)": [],
    "plaintext, no DP": ["privacy.mode=off", "encryption.scheme=off"],
}
# The imports a device needs, in the order it needs them (the plaintext device skips the DP and
# HE libraries: it never imports them).
IMPORTS = {
    "DP + BFV (default)": [
        "numpy",
        "torch",
        "flwr.clientapp",
        "fedpriv.apps.client",
        "tenseal",
        "opacus",
    ],
    "plaintext, no DP": ["numpy", "torch", "flwr.clientapp", "fedpriv.apps.client"],
}
FORBIDDEN = ("ray", "matplotlib", "datasets", "flwr_datasets", "sklearn", "fedpriv.report")
LIMIT_MB = 400
_LEN = struct.Struct(">I")


# --------------------------------------------------------------------------- framing
def _send(f: Any, data: bytes) -> None:
    f.write(_LEN.pack(len(data)) + data)
    f.flush()


def _recv(f: Any) -> bytes:
    head = f.read(_LEN.size)
    if len(head) < _LEN.size:
        raise EOFError("peer closed the pipe")
    (n,) = _LEN.unpack(head)
    data = f.read(n)
    if len(data) < n:
        raise EOFError("truncated message")
    return bytes(data)


# --------------------------------------------------------------------------- device process
def device(setting: str, spec: dict[str, Any]) -> None:
    """The device: imports one by one, then answers the server's messages until told to stop."""
    start = rss_bytes()
    imports = []
    for mod in IMPORTS[setting]:
        before, t0 = rss_bytes(), time.perf_counter()
        __import__(mod)
        imports.append(
            {
                "module": mod,
                "rss_growth": rss_bytes() - before,
                "rss_after": rss_bytes(),
                "seconds": time.perf_counter() - t0,
            }
        )
    import warnings

    warnings.filterwarnings("ignore")
    from flwr.app import Context, RecordDict
    from flwr.common.serde import message_from_proto, message_to_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage

    from fedpriv.apps.client import ClientSettings, handle_evaluate, handle_train
    from fedpriv.config import load_config

    cfg = load_config(None, spec["overrides"])
    settings = ClientSettings(
        Path(spec["keys"]), Path(spec["state"]), data=f"mnist:{spec['data']}", policy=None
    )
    context = Context(
        run_id=1,
        node_id=1,
        node_config={"partition-id": 0, "num-partitions": 1},
        state=RecordDict(),
        run_config={},
    )
    del cfg
    rx = os.fdopen(spec["rx"], "rb")
    tx = os.fdopen(spec["tx"], "wb")
    after_imports = rss_bytes()
    calls = []
    while True:
        data = _recv(rx)
        if not data:
            break
        ru0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        msg = message_from_proto(ProtoMessage.FromString(data))
        handler = handle_train if msg.metadata.message_type == "train" else handle_evaluate
        reply = handler(msg, context, settings)
        out = message_to_proto(reply).SerializeToString()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        calls.append(
            {
                "type": msg.metadata.message_type,
                "round": int(msg.content.config_records["config"]["server-round"]),  # type: ignore[arg-type]
                "cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime),
                "wall_s": time.perf_counter() - w0,
                "hwm_after": hwm_bytes(),
                "bytes_in": len(data),
                "bytes_out": len(out),
            }
        )
        _send(tx, out)
    loaded = sorted(m for m in FORBIDDEN if m in sys.modules)
    print(
        json.dumps(
            {
                "setting": setting,
                "start_rss": start,
                "imports": imports,
                "import_rss": after_imports,
                "peak_hwm": hwm_bytes(),
                "calls": calls,
                "forbidden_loaded": loaded,
                "torch_threads": __import__("torch").get_num_threads(),
            }
        ),
        flush=True,
    )


# --------------------------------------------------------------------------- server side
class _PipeGrid:
    """The two Grid methods the strategy uses; every message goes to the device process."""

    def __init__(self, tx: Any, rx: Any) -> None:
        self.tx, self.rx = tx, rx
        self.node_ids = [1]
        self.bytes_down = self.bytes_up = 0

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        replies = []
        for msg in messages:
            data = message_to_proto(msg).SerializeToString()
            self.bytes_down += len(data)
            _send(self.tx, data)
            back = _recv(self.rx)
            self.bytes_up += len(back)
            replies.append(message_from_proto(ProtoMessage.FromString(back)))
        return replies


def _device_data(cfg: Any, folder: Path) -> int:
    """Write the largest default partition's train and test split as an MNIST IDX folder."""
    from fedpriv.config import load_config
    from fedpriv.data import client_datasets, load_dataset, write_idx
    from fedpriv.runs.prepare import partition_sizes

    d = cfg.data
    full = load_dataset(d.dataset, holdout_fraction=d.holdout_fraction, seed=cfg.seed)[0]
    sizes = partition_sizes(load_config(None, ["federation.num_clients=10"]), full)
    largest = max(range(len(sizes)), key=lambda i: sizes[i])
    train, test = client_datasets(
        full, largest, 10, partitioner=d.partitioner, alpha=d.alpha, seed=cfg.seed
    )
    lo, hi = float(full.x.min()), float(full.x.max())

    def pixels(x: np.ndarray) -> np.ndarray:
        return np.round((x[:, 0] - lo) / (hi - lo) * 255).astype(np.uint8)

    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte", pixels(train.x))
    write_idx(folder / "train-labels-idx1-ubyte", train.y.astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte", pixels(test.x))
    write_idx(folder / "t10k-labels-idx1-ubyte", test.y.astype(np.uint8))
    return len(train) + len(test)


def measure(setting: str, rounds: int) -> dict[str, Any]:
    """Deal keys, start the device process, run ``rounds`` rounds against it."""
    from flwr.supercore.task_identity import TaskIdentity

    from fedpriv.config import load_config
    from fedpriv.crypto.codec import load_params_file
    from fedpriv.keys import deal_keys
    from fedpriv.models import build_model, num_params
    from fedpriv.protocol import request_json
    from fedpriv.strategy.core import EncryptedFedAvg

    overrides = [*SETTINGS[setting], "federation.num_clients=1", f"rounds={rounds}"]
    cfg = load_config(None, overrides)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-edge-") as tmp:
        root = Path(tmp)
        examples = _device_data(cfg, root / "data")
        model = build_model(cfg.train.model, (1, 8, 8), 10, seed=cfg.seed)
        deal_keys(cfg, num_values=num_params(model), max_weight=examples, out=root / "keys")
        params = load_params_file(root / "keys" / "server" / "params.json")
        to_dev_r, to_dev_w = os.pipe()
        from_dev_r, from_dev_w = os.pipe()
        spec = {
            "overrides": overrides,
            "keys": str((root / "keys" / "client").resolve()),
            "state": str(root / "state"),
            "data": str(root / "data"),
            "rx": to_dev_r,
            "tx": from_dev_w,
        }
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.edge", "--device", setting, json.dumps(spec)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
            env=env,
            pass_fds=(to_dev_r, from_dev_w),
        )
        os.close(to_dev_r)
        os.close(from_dev_w)
        tx, rx = os.fdopen(to_dev_w, "wb"), os.fdopen(from_dev_r, "rb")
        try:
            grid = _PipeGrid(tx, rx)
            strategy = EncryptedFedAvg(
                params,
                request_json(cfg),
                num_clients=1,
                fraction_train=1.0,
                fraction_evaluate=1.0,
                min_train_clients=1,
                seed=cfg.seed,
                node_wait_timeout=5.0,
            )
            strategy.run(grid, rounds)  # type: ignore[arg-type]
            _send(tx, b"")
            out, err = proc.communicate(timeout=600)
        finally:
            tx.close()
            rx.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"device failed ({proc.returncode}):\n{err.decode()[-3000:]}")
        res: dict[str, Any] = json.loads(lines[-1])
    trains = [c for c in res["calls"] if c["type"] == "train"]
    evals = [c for c in res["calls"] if c["type"] != "train"]
    res["device_examples"] = examples
    res["round_cpu_s"] = [
        t["cpu_s"] + (evals[i]["cpu_s"] if i < len(evals) else 0.0) for i, t in enumerate(trains)
    ]
    res["train_cpu_s"] = [t["cpu_s"] for t in trains]
    res["bytes_up"] = [t["bytes_out"] for t in trains]
    res["bytes_down"] = [t["bytes_in"] for t in trains]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="one round, the default setting only")
    ap.add_argument("--device", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.device:
        device(a.device[0], json.loads(a.device[1]))
        return
    rounds = 1 if a.smoke else 2
    names = list(SETTINGS)[:1] if a.smoke else list(SETTINGS)
    results = {}
    for name in names:
        print(f"{name}: device process, {rounds} round(s) ...", flush=True)
        results[name] = measure(name, rounds)
    rows = []
    for name, r in results.items():
        for imp in r["imports"]:
            rows.append([name, imp["module"], imp["rss_growth"] / MIB, imp["rss_after"] / MIB])
    print_table(
        "Device imports, one by one (RSS growth, MiB)",
        ["setting", "module", "RSS growth MiB", "RSS after MiB"],
        rows,
    )
    rows = [
        [
            name,
            r["import_rss"] / MIB,
            r["peak_hwm"] / MIB,
            r["peak_hwm"] / 1e6,
            *(r["round_cpu_s"] + [float("nan")] * (2 - len(r["round_cpu_s"])))[:2],
            r["bytes_up"][-1] / 1024,
            r["bytes_down"][-1] / 1024,
            ", ".join(r["forbidden_loaded"]) or "none",
        ]
        for name, r in results.items()
    ]
    print_table(
        "One device, its own data, fresh process",
        [
            "setting",
            "RSS after imports MiB",
            "peak RSS MiB",
            "peak RSS MB",
            "CPU s round 1",
            "CPU s round 2",
            "KiB up / round",
            "KiB down / round",
            "heavy packages loaded",
        ],
        rows,
    )
    d = results["DP + BFV (default)"]
    peak_mb = d["peak_hwm"] / 1e6
    print(f"target: peak {peak_mb:.0f} MB (<= {LIMIT_MB} MB); loaded: {d['forbidden_loaded']}")
    write_json(
        "edge_smoke" if a.smoke else "edge",
        {
            "rounds": rounds,
            "results": results,
            "target": {
                "peak_mb": peak_mb,
                "limit_mb": LIMIT_MB,
                "met": peak_mb <= LIMIT_MB and not d["forbidden_loaded"],
            },
        },
    )


if __name__ == "__main__":
    main()
