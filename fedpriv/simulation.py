"""Run a whole experiment on Flower's simulation engine (Ray), then evaluate as the key holder.

The runner plays the data owners' side: it deals the keys, starts the ServerApp and the
virtual ClientApps through Flower's simulation engine, and afterwards decrypts each round's
global model with the client key to evaluate it on the held-out test set. The server never
sees plaintext weights or the held-out data.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig, config_to_dict
from fedpriv.errors import FedprivError, RunFailedError
from fedpriv.runs import RunDir

__all__ = ["SimulationResult", "partition_sizes", "simulate"]

log = logging.getLogger("fedpriv.simulation")


@dataclass(frozen=True)
class SimulationResult:
    run_dir: Path
    metrics: dict[str, Any]
    wall_seconds: float

    @property
    def final_accuracy(self) -> float | None:
        for r in reversed(self.metrics.get("rounds", [])):
            if r.get("heldout_accuracy") is not None:
                return float(r["heldout_accuracy"])
        return None


def partition_sizes(cfg: RunConfig, train: Any) -> list[int]:
    from fedpriv.data import client_datasets

    d = cfg.data
    return [
        len(
            client_datasets(
                train,
                i,
                cfg.federation.num_clients,
                partitioner=d.partitioner,
                alpha=d.alpha,
                classes_per_partition=d.classes_per_partition,
                test_fraction=d.test_fraction,
                seed=cfg.seed,
            )[0]
        )
        for i in range(cfg.federation.num_clients)
    ]


def _write_config(cfg: RunConfig, rd: RunDir) -> None:
    import tomli_w

    d = config_to_dict(cfg)
    (rd.root / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True), encoding="utf-8")
    (rd.root / "config.toml").write_text(tomli_w.dumps(d), encoding="utf-8")


def _backend_config(cfg: RunConfig) -> dict[str, Any]:
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.simulation.ray_address:
        init = {"address": cfg.simulation.ray_address}
    else:
        init["num_cpus"] = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cfg.simulation.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": init,
    }


def _evaluate_rounds(
    cfg: RunConfig, rd: RunDir, test: Any, shape: tuple[int, ...], num_classes: int
) -> None:
    """Decrypt each round's global model (as a key holder) and evaluate it on the held-out set."""
    from fedpriv.crypto.codec import ClientCodec
    from fedpriv.models import build_model, evaluate, save_weights, set_flat_params

    codec = ClientCodec.load(rd.client_keys)
    doc = rd.read_metrics()
    model = build_model(cfg.train.model, shape, num_classes, seed=cfg.seed)
    loss0, acc0 = evaluate(model, test)
    doc["initial_heldout_accuracy"], doc["initial_heldout_loss"] = acc0, loss0
    last = None
    replay = None
    if cfg.distributed_dp:
        # Aggregates are noisy gradients: replay the clients' steps from the seeded model.
        from fedpriv.privacy.distributed import ModelReplay

        replay = ModelReplay(cfg, codec.params, model)
    every = max(1, cfg.simulation.eval_every)
    final = max(
        (r["round"] for r in doc["rounds"] if rd.global_blob(r["round"]).exists()), default=0
    )
    for r in doc["rounds"]:
        path = rd.global_blob(r["round"])
        if not path.exists():
            continue
        mean, total_weight, count = codec.decode(path.read_bytes())
        if replay is not None:
            mean = replay.step(r["round"], mean, total_weight, count)
            r["model_sha256"] = replay.digest()
        if r["round"] % every and r["round"] != final:
            continue
        set_flat_params(model, mean)
        r["heldout_loss"], r["heldout_accuracy"] = evaluate(model, test)
        r["aggregate_total_weight"], r["aggregate_count"] = total_weight, count
        if codec.encrypted:
            r["quantization_error_bound"] = float(codec.params.error_bound(int(total_weight)))  # type: ignore[attr-defined]
        last = r["round"]
    doc["heldout_examples"] = len(test)
    # data.validation_fraction > 0: the "held-out" set is a validation split (tuning runs).
    doc["heldout_set"] = "validation" if cfg.data.validation_fraction > 0 else "test"
    doc["final_round"] = last
    if replay is not None:
        doc["distributed_replay"] = _compare_models(rd, doc["rounds"], replay.discarded)
    if last is not None:
        save_weights(model, rd.model)
    from fedpriv.fileio import atomic_write_text

    atomic_write_text(rd.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)


def _compare_models(
    rd: RunDir, rounds: list[dict[str, Any]], discarded: list[int]
) -> dict[str, Any]:
    """Do the clients' signed model digests match the key holder's replay? (distributed DP)"""
    from fedpriv.privacy.ledger import read_chain

    after = {r["round"]: r["model_sha256"] for r in rounds if "model_sha256" in r}
    checked, mismatches = 0, []
    for e in read_chain(rd.ledger):
        doc = json.loads(e.get("client_record") or "{}")
        info = doc.get("distributed") or {}
        applied = info.get("applied_round")
        if doc.get("status") != "trained" or not applied:
            continue
        checked += 1
        if after.get(applied) != info.get("model_sha256"):
            mismatches.append({"round": e.get("round"), "client_id": e.get("client_id")})
    return {"records_checked": checked, "mismatches": mismatches, "discarded_rounds": discarded}


def simulate(
    cfg: RunConfig,
    out: Path | None = None,
    *,
    progress: Callable[[Any], None] | None = None,
    engine: str = "python",
    project_dir: Path | None = None,
    resume: bool = False,
    client_app: Any = None,
    insecure_test_seed: int | None = None,
    strategy_class: Any = None,
) -> SimulationResult:
    """Run ``cfg`` in simulation and return where its outputs went.

    ``engine="python"`` drives Flower's simulation engine in-process (``run_simulation``);
    ``engine="flwr"`` submits the project's ``server/`` and ``clients/`` apps with ``flwr run``
    to a private local SuperLink (see :mod:`fedpriv.flwr_run`). Both write the same run folder.
    ``resume=True`` continues the run in ``out`` from its last server checkpoint (clients keep
    their persisted privacy state). ``client_app`` replaces fedpriv's ClientApp (experiments
    with faulty or adversarial clients). ``insecure_test_seed`` makes the virtual devices' DP
    randomness reproducible (tests only: the run is then marked not private everywhere).
    ``strategy_class`` replaces the server's strategy (experiments with an adversarial server).
    """
    from fedpriv.data import load_dataset
    from fedpriv.keys import deal_keys
    from fedpriv.models import build_model, num_params

    if engine not in ("python", "flwr"):
        raise FedprivError(f"unknown engine {engine!r} (use 'python' or 'flwr')")
    t_start = time.perf_counter()
    root = out or Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
    rd = RunDir(root)
    if resume:
        from fedpriv.config import load_config

        if not (root / "config.toml").exists():
            raise FedprivError(f"{root}: no run to resume (config.toml missing)")
        cfg = load_config(root / "config.toml")
    elif root.exists() and any(root.iterdir()):
        raise FedprivError(
            f"{root}: run folder exists and is not empty; choose another --out or --resume"
        )
    d = cfg.data
    train, test = load_dataset(
        d.dataset,
        label_column=d.label_column,
        holdout_fraction=d.holdout_fraction,
        seed=cfg.seed,
        max_samples=d.max_samples,
        validation_fraction=d.validation_fraction,
    )
    sizes = partition_sizes(cfg, train)
    if cfg.distributed_dp and cfg.privacy.total_records == 0:
        # N is public: the data owners (here, the runner that deals their keys) declare it.
        import dataclasses

        cfg = dataclasses.replace(
            cfg, privacy=dataclasses.replace(cfg.privacy, total_records=sum(sizes))
        )
    if not resume:
        rd.root.mkdir(parents=True, exist_ok=True)
        _write_config(cfg, rd)
    model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
    max_weight = cfg.encryption.max_examples_per_client or max(sizes)
    if not resume:
        deal_keys(cfg, num_values=num_params(model), max_weight=max_weight, out=rd.keys)
    # Virtual devices on this machine share the accountant's pure results (one PRV evaluation
    # per distinct history instead of one per device process); removed after the run.
    import tempfile

    from fedpriv.privacy.accounting import MEMO_ENV

    memo = tempfile.mkdtemp(prefix="fedpriv-accountant-")
    old_memo = os.environ.get(MEMO_ENV)
    os.environ[MEMO_ENV] = memo
    try:
        if engine == "python":
            _run_python_engine(
                cfg,
                rd,
                progress,
                resume=resume,
                client_app=client_app,
                insecure_test_seed=insecure_test_seed,
                strategy_class=strategy_class,
            )
        else:
            from fedpriv.flwr_run import flwr_run_local

            flwr_run_local(
                _project_dir(project_dir),
                config_path=rd.root / "config.toml",
                keys_dir=rd.keys,
                run_dir=rd.root,
                num_supernodes=cfg.federation.num_clients,
                resume=resume,
            )
    finally:
        _shutdown_ray()
        import shutil

        shutil.rmtree(memo, ignore_errors=True)
        if old_memo is None:
            os.environ.pop(MEMO_ENV, None)
        else:
            os.environ[MEMO_ENV] = old_memo
    if not rd.metrics.exists():
        raise RunFailedError(
            "simulation finished without writing metrics (the ServerApp did not run)"
        )
    _evaluate_rounds(cfg, rd, test, train.input_shape, train.num_classes)
    doc = rd.read_metrics()
    doc["partition_sizes"] = sizes
    doc["engine"] = engine
    doc["wall_seconds"] = time.perf_counter() - t_start
    from fedpriv.fileio import atomic_write_text

    atomic_write_text(rd.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)
    from fedpriv.report import write_report

    # Every run ships its signed privacy report; failing to build it fails the run.
    write_report(rd.root)
    return SimulationResult(rd.root, doc, doc["wall_seconds"])


def _project_dir(given: Path | None) -> Path:
    """The folder holding pyproject.toml with the Flower app table (server/ and clients/)."""
    cand = given or Path(__file__).resolve().parents[1]
    if not ((cand / "pyproject.toml").exists() and (cand / "server" / "app.py").exists()):
        raise FedprivError(
            f"{cand}: not the fedpriv project folder (pyproject.toml, server/, clients/); "
            "pass --project DIR to use the `flwr` engine"
        )
    return cand


def _run_python_engine(
    cfg: RunConfig,
    rd: RunDir,
    progress: Callable[[Any], None] | None,
    *,
    resume: bool = False,
    client_app: Any = None,
    insecure_test_seed: int | None = None,
    strategy_class: Any = None,
) -> None:
    from flwr.simulation import run_simulation

    from fedpriv.apps import ClientSettings, ServerSettings, make_client_app, make_server_app
    from fedpriv.privacy.policy import DevicePolicy

    server_app = make_server_app(
        ServerSettings(
            cfg,
            rd.root,
            rd.server_params,
            progress=progress,
            node_wait_timeout=120.0,
            resume=resume,
            **({"strategy_class": strategy_class} if strategy_class is not None else {}),
        )
    )
    if client_app is None:
        client_app = make_client_app(
            ClientSettings(
                rd.client_keys.resolve(),
                (rd.root / "clients").resolve(),
                # Each virtual device holds its own copy of the experiment: its policy.
                policy=DevicePolicy.from_config(cfg),
                insecure_test_seed=insecure_test_seed,
            )
        )
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=cfg.federation.num_clients,
            backend_config=_backend_config(cfg),
        )
    except FedprivError:
        raise
    except Exception as exc:
        raise RunFailedError(f"simulation failed: {exc}") from exc


def _shutdown_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray is a hard dependency via flwr[simulation]
        pass
