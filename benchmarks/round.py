"""Round anatomy: where the time of one federated round goes, with and without DP and encryption.

The round runs the real code: the ServerApp's strategy (:class:`EncryptedFedAvg`) drives the
ClientApp's handlers (``handle_train``, ``handle_evaluate``) through an in-process grid that
does what Flower's transport does with every message: it serializes it to Flower's protobuf
bytes, sends the bytes over a loopback socket and parses them on the other side. Clients run
one after another, so the round's time is the total work of the round (the simulation engine
spreads the client work over its workers; the server's part stays serial). Each phase is timed
exclusively (a phase nested in another is subtracted from it):

* local training (``train_local``: Opacus DP-SGD or plain SGD);
* DP accounting (noise planning, once per client and run, and the budget check each round);
* quantize+encrypt (``ClientCodec.encode``, without SEAL's serialization);
* serialization (SEAL ciphertext save/load, fedpriv wire framing, Flower protobuf both ways);
* transfer (loopback socket, both ways);
* server aggregation (``aggregate_train``: validation and homomorphic addition);
* decrypt (``ClientCodec.decode`` of the global model, at training and at evaluation);
* evaluation (clients' local test splits);
* other (data partitioning, privacy state and ledger, message records, sampling).

Default experiment (10 clients, digits, ``cnn``, 3 local epochs), four settings: DP+BFV (the
default), DP only, BFV only, neither; plus DP+CKKS for reference. Rounds 2 and 3 are the steady
state (round 1 also plans the noise and has no model to decrypt). Repetitions are interleaved
and the median is reported.

Targets: what encryption adds <= 5% of the round; DP+encryption <= 2x the plaintext
non-private round.

``--simulate`` also runs the same four settings on Flower's simulation engine (Ray, 2 workers)
and reports its per-round wall time.

Key custody: ``DP + BFV, threshold custody`` runs the same round with the secret Shamir-shared
(T = 6 of 10): after aggregation T clients answer a ``train.decrypt`` request with a masked
partial decryption, the server combines, and the next instruction carries the combined blob.
The "threshold decryption" phase is the clients' partial decryptions and the server's combine;
the traffic table gives the protocol-level bytes per client per round (Flower-serialized
messages, as a device sends and receives them) for both custodies, against float32.

Run: ``python -m benchmarks.round`` (``--custody``: only the two custody settings).
"""

from __future__ import annotations

import argparse
import queue
import socket
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from benchmarks._common import median, print_table, read_json, write_json

PHASES = (
    "local training",
    "DP accounting",
    "quantize+encrypt",
    "serialization",
    "transfer",
    "server aggregation",
    "threshold decryption",
    "decrypt",
    "evaluation",
    "other",
)
HE_PHASES = (
    "quantize+encrypt",
    "serialization",
    "transfer",
    "server aggregation",
    "threshold decryption",
    "decrypt",
)
SETTINGS: dict[str, list[str]] = {
    "DP + BFV (default)": [],
    "DP, no encryption": ["encryption.scheme=off"],
    "BFV, no DP": ["privacy.mode=off"],
    "neither (plaintext FedAvg)": ["privacy.mode=off", "encryption.scheme=off"],
    "DP + CKKS": ["encryption.scheme=ckks"],
    "DP + BFV, threshold custody": ["encryption.key_custody=threshold"],
}
CUSTODY = ("DP + BFV (default)", "DP + BFV, threshold custody")


class Phases:
    """Exclusive wall time per label for functions patched with :meth:`wrap`."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[list[float]] = []  # per active call: [child seconds]
        self._undo: list[Callable[[], None]] = []

    def timer(self, label: str) -> Any:
        phases = self

        class _T:
            def __enter__(self) -> None:
                self.t0 = time.perf_counter()
                phases._stack.append([0.0])

            def __exit__(self, *exc: object) -> None:
                dt = time.perf_counter() - self.t0
                (child,) = phases._stack.pop()
                phases.totals[label] += dt - child
                if phases._stack:
                    phases._stack[-1][0] += dt

        return _T()

    def wrap(self, owner: Any, attr: str, label: str) -> None:
        orig = getattr(owner, attr)

        def wrapper(*a: Any, **kw: Any) -> Any:
            with self.timer(label):
                return orig(*a, **kw)

        setattr(owner, attr, wrapper)
        self._undo.append(lambda: setattr(owner, attr, orig))

    def take(self) -> dict[str, float]:
        out = dict(self.totals)
        self.totals.clear()
        return out

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


class Loopback:
    """A loopback socket pair with a sender thread: carries bytes the way a local link would."""

    def __init__(self) -> None:
        self._a, self._b = socket.socketpair()
        self._q: queue.Queue[bytes | None] = queue.Queue()
        self._t = threading.Thread(target=self._send, daemon=True)
        self._t.start()

    def _send(self) -> None:
        while (data := self._q.get()) is not None:
            self._a.sendall(data)

    def carry(self, data: bytes) -> bytes:
        self._q.put(data)
        buf = bytearray(len(data))
        view, got = memoryview(buf), 0
        while got < len(data):
            n = self._b.recv_into(view[got:])
            if n == 0:
                raise ConnectionError("loopback closed")
            got += n
        return bytes(buf)

    def close(self) -> None:
        self._q.put(None)
        self._t.join()
        self._a.close()
        self._b.close()


class InProcessGrid:
    """The two methods of Flower's Grid the strategy uses, with real serialization."""

    def __init__(self, phases: Phases, handlers: dict[str, Callable[[Any, int], Any]]) -> None:
        self.phases = phases
        self.handlers = handlers
        self.node_ids: list[int] = []
        self.bytes_down = 0
        self.bytes_up = 0
        # (message type, node) -> [bytes down, bytes up, messages]: traffic per client
        self.traffic: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0, 0])
        self.link = Loopback()

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def _carry(self, msg: Any) -> Any:
        from flwr.common.serde import message_from_proto, message_to_proto
        from flwr.proto.message_pb2 import Message as ProtoMessage

        with self.phases.timer("serialization"):
            data = message_to_proto(msg).SerializeToString()
        with self.phases.timer("transfer"):
            data = self.link.carry(data)
        with self.phases.timer("serialization"):
            out = message_from_proto(ProtoMessage.FromString(data))
        return out, len(data)

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None) -> Any:
        replies = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            arrived, n_down = self._carry(msg)
            self.bytes_down += n_down
            reply = self.handlers[msg.metadata.message_type](arrived, node)
            back, n_up = self._carry(reply)
            self.bytes_up += n_up
            t = self.traffic[(str(msg.metadata.message_type), node)]
            t[0], t[1], t[2] = t[0] + n_down, t[1] + n_up, t[2] + 1
            replies.append(back)
        return replies


def run_setting(
    overrides: list[str], rounds: int, partitions: list[int] | None = None
) -> dict[str, Any]:
    """One fresh federation of the default experiment; phase times per round.

    The accountant's per-process caches are emptied first, as in a fresh client process, so
    one setting does not profit from another's noise plans and epsilons. ``partitions``
    limits the federation to those clients (their data split stays that of the full config).
    """
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    import fedpriv.apps.client as client_mod
    import fedpriv.crypto.bfv as bfv_mod
    import fedpriv.crypto.threshold as threshold_mod
    import fedpriv.crypto.wire as wire_mod
    import fedpriv.privacy as privacy_mod
    import fedpriv.privacy.accounting as accounting
    from fedpriv.apps.client import ClientSettings, handle_evaluate, handle_train
    from fedpriv.apps.decrypt import handle_decrypt
    from fedpriv.config import load_config
    from fedpriv.crypto.codec import ClientCodec, load_params_file
    from fedpriv.data import load_dataset
    from fedpriv.keys import deal_keys
    from fedpriv.models import build_model, num_params
    from fedpriv.protocol import request_json
    from fedpriv.runs.prepare import partition_sizes
    from fedpriv.strategy.core import EncryptedFedAvg

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    accounting.plan_noise_multiplier.cache_clear()
    eps_cache = getattr(accounting, "_opacus_epsilon", None)
    if eps_cache is not None:
        eps_cache.cache_clear()
    client_mod._codec.cache_clear()
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-round-") as tmp:
        root = Path(tmp)
        d = cfg.data
        train, _ = load_dataset(
            d.dataset, holdout_fraction=d.holdout_fraction, seed=cfg.seed, max_samples=d.max_samples
        )
        sizes = partition_sizes(cfg, train)
        model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
        max_weight = cfg.encryption.max_examples_per_client or max(sizes)
        deal_keys(cfg, num_values=num_params(model), max_weight=max_weight, out=root / "keys")
        params = load_params_file(root / "keys" / "server" / "params.json")
        settings = ClientSettings((root / "keys" / "client").resolve(), root / "clients")
        k = cfg.federation.num_clients
        contexts = {
            i + 1: Context(
                run_id=1,
                node_id=i + 1,
                node_config={"partition-id": i, "num-partitions": k},
                state=RecordDict(),
                run_config={},
            )
            for i in (range(k) if partitions is None else partitions)
        }
        ph = Phases()
        handlers = {
            "train": lambda m, n: handle_train(m, contexts[n], settings),
            "evaluate": lambda m, n: handle_evaluate(m, contexts[n], settings),
            "train.decrypt": lambda m, n: handle_decrypt(m, contexts[n], settings),
        }
        threshold = None
        if getattr(params, "custody", "shared") == "threshold":
            from fedpriv.crypto.tcustody import ThresholdPublic

            threshold = ThresholdPublic.load(root / "keys" / "server")
        grid = InProcessGrid(ph, handlers)
        grid.node_ids = sorted(contexts)
        per_round: list[dict[str, Any]] = []
        marks = {"t0": time.perf_counter(), "cpu": time.process_time(), "down": 0, "up": 0}

        def on_round(rec: Any, blob: bytes | None) -> None:
            now, cpu = time.perf_counter(), time.process_time()
            phases = ph.take()
            traffic = {f"{m}@{n}": list(v) for (m, n), v in grid.traffic.items()}
            grid.traffic.clear()
            wall = now - marks["t0"]
            phases["other"] = phases.get("other", 0.0) + max(0.0, wall - sum(phases.values()))
            per_round.append(
                {
                    "round": rec.server_round,
                    "wall_s": wall,
                    "cpu_s": cpu - marks["cpu"],
                    "phases_s": phases,
                    "accepted": rec.accepted,
                    "bytes_down": grid.bytes_down - marks["down"],
                    "bytes_up": grid.bytes_up - marks["up"],
                    "federated_accuracy": rec.federated_accuracy,
                    "traffic": traffic,
                    "decryption": rec.decryption.to_dict() if rec.decryption else None,
                }
            )
            marks.update(
                t0=time.perf_counter(),
                cpu=time.process_time(),
                down=grid.bytes_down,
                up=grid.bytes_up,
            )

        strategy = EncryptedFedAvg(
            params,
            request_json(cfg),  # what a server sends: the devices' policy stays theirs
            num_clients=len(contexts),
            fraction_train=cfg.federation.fraction_train,
            fraction_evaluate=cfg.federation.fraction_evaluate,
            min_train_clients=cfg.federation.min_train_clients,
            seed=cfg.seed,
            on_round=on_round,
            node_wait_timeout=5.0,
            **({"threshold": threshold} if threshold is not None else {}),
        )
        ph.wrap(privacy_mod, "train_local", "local training")
        ph.wrap(privacy_mod, "check_budget", "DP accounting")
        ph.wrap(client_mod, "_planned_sigma", "DP accounting")
        import fedpriv.models as models_mod

        ph.wrap(models_mod, "evaluate", "evaluation")  # handle_evaluate imports it from here
        ph.wrap(ClientCodec, "encode", "quantize+encrypt")
        ph.wrap(ClientCodec, "decode", "decrypt")
        ph.wrap(bfv_mod, "save_to_bytes", "serialization")
        ph.wrap(bfv_mod, "load_from_bytes", "serialization")
        ph.wrap(wire_mod, "pack", "serialization")
        ph.wrap(wire_mod, "unpack", "serialization")
        ph.wrap(EncryptedFedAvg, "aggregate_train", "server aggregation")
        ph.wrap(threshold_mod.KeyShare, "partial_decrypt", "threshold decryption")
        ph.wrap(threshold_mod, "combine_partials", "threshold decryption")
        try:
            # The client records a privacy charge into the state after training: epsilon of the
            # updated history is DP accounting too.
            from fedpriv.privacy.state import ClientPrivacyState

            ph.wrap(ClientPrivacyState, "epsilon", "DP accounting")
            marks.update(t0=time.perf_counter(), cpu=time.process_time())
            strategy.run(grid, rounds)
        finally:
            ph.restore()
            grid.link.close()
        return {
            "overrides": overrides,
            "partition_sizes": sizes,
            "num_values": params.num_values,
            "scheme": params.scheme,
            "rounds": per_round,
        }


def simulate_setting(overrides: list[str], rounds: int) -> dict[str, Any]:
    """The same setting on Flower's simulation engine; per-round seconds from metrics.json."""
    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    cfg = load_config(None, [*overrides, f"rounds={rounds}", "name=bench-round"])
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-sim-") as tmp:
        t0 = time.perf_counter()
        res = simulate(cfg, Path(tmp) / "run")
        wall = time.perf_counter() - t0
    rs = res.metrics["rounds"]
    return {
        "overrides": overrides,
        "wall_s": wall,
        "round_seconds": [r.get("seconds") for r in rs],
        "final_accuracy": res.final_accuracy,
    }


def run_simulations(rounds: int) -> dict[str, Any]:
    """The four settings on Flower's simulation engine; prints a table."""
    sim: dict[str, Any] = {}
    for name in list(SETTINGS)[:4]:
        print(f"simulation engine: {name} ...", flush=True)
        try:
            sim[name] = simulate_setting(SETTINGS[name], rounds)
        except Exception as e:  # keep whatever else was measured
            sim[name] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(f"  failed: {sim[name]['error']}", flush=True)
    ok = {n: s for n, s in sim.items() if "error" not in s}
    base_name = "neither (plaintext FedAvg)"
    if base_name in ok:
        sbase = median(ok[base_name]["round_seconds"][1:])
        rows = []
        for name, s in ok.items():
            r = median(s["round_seconds"][1:])
            rows.append([name, s["round_seconds"][0], r, r / sbase, s["wall_s"]])
        print_table(
            "Flower simulation engine (Ray, 2 workers): seconds per round",
            ["setting", "round 1 s", "later rounds s (median)", "x plaintext", "whole run s"],
            rows,
        )
    return sim


def _traffic(run: dict[str, Any]) -> dict[str, float]:
    """Median bytes per round (steady state) of one client in each protocol role."""
    st = [r for r in run["rounds"] if r["round"] >= 2]
    train_down, train_up, dec_down, dec_up = [], [], [], []
    for r in st:
        for key, (down, up, n) in r["traffic"].items():
            kind = key.split("@")[0]
            if kind == "train":
                train_down.append(down)
                train_up.append(up)
            elif kind == "train.decrypt":
                dec_down.append(down / n)
                dec_up.append(up / n)
    requests = [r["decryption"]["requests"] for r in st if r.get("decryption")]
    return {
        "train_down": median(train_down),
        "train_up": median(train_up),
        "decrypt_down": median(dec_down) if dec_down else 0.0,
        "decrypt_up": median(dec_up) if dec_up else 0.0,
        "decrypt_requests": median(requests) if requests else 0.0,
    }


def custody_tables(
    runs: dict[str, list[dict[str, Any]]], steady: dict[str, dict[str, float]]
) -> dict[str, Any]:
    """Shared vs threshold custody: protocol traffic per client per round, and round time."""
    f32 = 4 * runs[CUSTODY[0]][0]["num_values"]
    out: dict[str, Any] = {"float32_bytes": f32, "traffic": {}}
    rows = []
    for name in CUSTODY:
        t = _traffic(runs[name][0])
        out["traffic"][name] = t
        k = len(runs[name][0]["partition_sizes"])
        deal = t["decrypt_down"] + t["decrypt_up"]
        frac = (
            runs[name][0]["rounds"][-1]["decryption"]["threshold"] / k
            if runs[name][0]["rounds"][-1].get("decryption")
            else 0.0
        )
        rows.append(
            [
                name,
                t["train_up"] / f32,
                t["train_down"] / f32,
                t["decrypt_down"] / f32,
                t["decrypt_up"] / f32,
                (t["train_up"] + t["train_down"] + deal * frac) / f32,
                steady[name]["round"] * 1e3,
            ]
        )
    print_table(
        "Traffic per client per round (Flower-serialized messages) / float32 model bytes",
        [
            "custody",
            "update up",
            "global down",
            "decrypt request down (T clients)",
            "partial up (T clients)",
            "average client total",
            "round ms",
        ],
        rows,
    )
    shared, thr = steady[CUSTODY[0]], steady[CUSTODY[1]]
    out["round_x_shared"] = thr["round"] / shared["round"]
    he_thr, he_shared = (sum(x[p] for p in HE_PHASES) for x in (thr, shared))
    out["he_phases_x_shared"] = he_thr / max(1e-9, he_shared)
    # Training and accounting are the same work under both custodies; on a loaded machine
    # their times swing by more than the custody changes, so also compare like for like.
    out["round_x_shared_same_training"] = (shared["round"] + he_thr - he_shared) / shared["round"]
    print(
        f"threshold custody: round {out['round_x_shared']:.2f}x shared custody measured, "
        f"{out['round_x_shared_same_training']:.2f}x with the same training and accounting "
        f"time; encryption phases {he_thr * 1e3:.0f} ms vs {he_shared * 1e3:.0f} ms "
        f"({out['he_phases_x_shared']:.2f}x)"
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--simulate", action="store_true", help="also time the Ray engine")
    ap.add_argument(
        "--simulate-only",
        action="store_true",
        help="only the Ray engine part, added to an earlier results/round.json",
    )
    ap.add_argument(
        "--custody", action="store_true", help="only shared vs threshold custody (DP + BFV)"
    )
    a = ap.parse_args()
    if a.simulate_only:
        doc = read_json("round")
        doc["main_run"] = {k: doc.pop(k, None) for k in ("when", "machine")}
        doc.pop("benchmark", None)
        doc["simulation"] = run_simulations(a.rounds)
        write_json("round", doc)
        return
    import torch

    torch.set_num_threads(1)  # what a simulation worker with num_cpus=1 gets
    import warnings

    warnings.filterwarnings("ignore")
    chosen = {n: SETTINGS[n] for n in CUSTODY} if a.custody else SETTINGS
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in chosen}
    for rep in range(a.reps):
        names = list(chosen)
        names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order
        for name in names:
            print(f"rep {rep + 1}/{a.reps}: {name} ...", flush=True)
            runs[name].append(run_setting(SETTINGS[name], a.rounds))
    steady: dict[str, dict[str, float]] = {}
    first: dict[str, dict[str, float]] = {}
    rows = []
    for name, reps in runs.items():
        st = [r for run in reps for r in run["rounds"] if r["round"] >= 2]
        ph = {p: median(r["phases_s"].get(p, 0.0) for r in st) for p in PHASES}
        ph["round"] = median(r["wall_s"] for r in st)
        steady[name] = ph
        r1 = reps[0]["rounds"][0]
        first[name] = {"round": r1["wall_s"], **r1["phases_s"]}
        rows.append(
            [
                name,
                *(ph[p] * 1e3 for p in PHASES),
                ph["round"] * 1e3,
                first[name]["round"] * 1e3,
                median(r["bytes_up"] for r in st) / 1024,
            ]
        )
    print_table(
        "One round, 10 clients run one after another (ms; median of rounds 2-3 over repetitions)",
        ["setting", *PHASES, "round", "round 1 (plans noise)", "KiB up"],
        rows,
    )
    custody = custody_tables(runs, steady) if all(n in runs for n in CUSTODY) else {}
    if a.custody:
        doc = read_json("round")
        doc["custody"] = {"steady_state_s": {n: steady[n] for n in CUSTODY}, **custody}
        write_json("round", doc)
        return
    base = steady["neither (plaintext FedAvg)"]
    dp_he, dp_only = steady["DP + BFV (default)"], steady["DP, no encryption"]
    he_only = steady["BFV, no DP"]
    added = sum(dp_he[p] - dp_only[p] for p in HE_PHASES)
    added_nodp = sum(he_only[p] - base[p] for p in HE_PHASES)
    he_crypto = sum(dp_he[p] for p in HE_PHASES)
    share_rows = [
        [
            "encryption adds (DP on): HE phases, BFV - plaintext",
            added * 1e3,
            added / dp_he["round"],
        ],
        [
            "encryption adds (DP off): HE phases, BFV - plaintext",
            added_nodp * 1e3,
            added_nodp / he_only["round"],
        ],
        ["HE phases in the DP+BFV round (absolute)", he_crypto * 1e3, he_crypto / dp_he["round"]],
        [
            "DP+BFV round vs DP round (whole round)",
            (dp_he["round"] - dp_only["round"]) * 1e3,
            (dp_he["round"] - dp_only["round"]) / dp_he["round"],
        ],
    ]
    print_table("What encryption adds (target <= 5% of the round)", ["", "ms", "share"], share_rows)
    ratio_rows = [
        [name, steady[name]["round"] * 1e3, steady[name]["round"] / base["round"]]
        for name in SETTINGS
    ]
    print_table(
        "Round time vs the plaintext non-private round (target DP+BFV <= 2x)",
        ["setting", "round ms", "x plaintext"],
        ratio_rows,
    )
    overhead = dp_he["round"] / base["round"]
    # Without --simulate, keep the engine timings of an earlier run (they are labelled so).
    earlier = read_json("round")
    sim = (
        run_simulations(a.rounds)
        if a.simulate
        else {
            **earlier.get("simulation", {}),
            "_from_earlier_run": earlier.get("main_run", {}).get("when") or earlier.get("when"),
        }
        if earlier.get("simulation")
        else {}
    )
    print(
        f"targets: encryption adds {added / dp_he['round']:.1%} of the DP+BFV round (<= 5%); "
        f"DP+BFV round = {overhead:.2f}x plaintext (<= 2x)"
    )
    write_json(
        "round",
        {
            "settings": SETTINGS,
            "steady_state_s": steady,
            "round1_s": first,
            "runs": runs,
            "simulation": sim,
            "custody": custody,
            "targets": {
                "encryption_added_share": added / dp_he["round"],
                "encryption_added_share_no_dp": added_nodp / he_only["round"],
                "privacy_overhead_x": overhead,
            },
        },
    )


if __name__ == "__main__":
    main()
