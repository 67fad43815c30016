"""A key holder decrypts a run's global models and evaluates them on held-out data.

The server only holds ``globals/round_NNN.bin`` (ciphertexts). Whoever holds the HE secret (the
simulation runner, a client bundle, a device's state folder after the sealed relay, the dealer
folder) decrypts each round's aggregate, evaluates it, and writes the held-out fields into
``metrics.json`` plus ``model.safetensors`` (the final model in the clear: keep it with the
data owners). Simulation and deployment both evaluate through :func:`evaluate_run`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import StateError
from fedpriv.fileio import atomic_write_text
from fedpriv.runs.folder import RunDir
from fedpriv.runs.keys import load_codec
from fedpriv.runs.result import RunResult

if TYPE_CHECKING:
    from fedpriv.runs.prepare import PreparedRun

__all__ = ["evaluate_run"]


def evaluate_run(
    run_dir: str | Path,
    key_dir: str | Path,
    *,
    config: RunConfig | None = None,
    data: str | None = None,
    out: str | Path | None = None,
    prepared: PreparedRun | None = None,
) -> RunResult:
    """Decrypt and evaluate every round's global model of a run.

    Parameters
    ----------
    run_dir : path
        The run folder, or a copy of the server's (``metrics.json``, ``globals/``).
    key_dir : path
        Key holder material: a simulation run's ``keys/`` (or ``keys/client``), a client bundle
        holding the secret, a device's ``keys/`` after the sealed relay, or the dealer folder.
    config : RunConfig, optional
        Default ``<run_dir>/config.toml``.
    data : str, optional
        Held-out data spec (a CSV, an MNIST folder...), used whole; default the config
        dataset's held-out split (what simulation evaluates on).
    out : path, optional
        Where ``metrics.json`` (with the held-out fields), ``model.safetensors`` and
        ``config.toml`` go (default ``run_dir``).
    prepared : PreparedRun, optional
        The config's data, already loaded (saves loading it again).

    Returns
    -------
    RunResult
        Read back from the folder written.
    """
    from fedpriv.data import load_dataset
    from fedpriv.models import build_model, evaluate, save_weights, set_flat_params

    rd = RunDir(Path(run_dir))
    if not rd.metrics.exists():
        raise StateError(f"{rd.metrics} not found: not a fedpriv run folder")
    cfg = config or load_config(rd.config)
    codec = load_codec(Path(key_dir))
    d = cfg.data
    if prepared is not None:
        train, test = prepared.train, prepared.test
    else:
        train, test = load_dataset(
            d.dataset,
            label_column=d.label_column,
            holdout_fraction=d.holdout_fraction,
            seed=cfg.seed,
            max_samples=d.max_samples,
            validation_fraction=d.validation_fraction,
        )
    if data:
        from fedpriv.deploy.client import normalize_data_spec

        test, _ = load_dataset(
            normalize_data_spec(data),
            label_column=d.label_column,
            holdout_fraction=0.0,
            seed=cfg.seed,
        )
    doc = rd.read_metrics()
    model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
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
        (
            int(r["round"])
            for r in doc.get("rounds", [])
            if rd.global_blob(int(r["round"])).exists()
        ),
        default=0,
    )
    for r in doc.get("rounds", []):
        path = rd.global_blob(int(r["round"]))
        if not path.exists():
            continue
        mean, total_weight, count = codec.decode(path.read_bytes())
        if replay is not None:
            mean = replay.step(int(r["round"]), mean, total_weight, count)
            r["model_sha256"] = replay.digest()
        if int(r["round"]) % every and int(r["round"]) != final:
            continue
        set_flat_params(model, mean)
        r["heldout_loss"], r["heldout_accuracy"] = evaluate(model, test)
        r["aggregate_total_weight"], r["aggregate_count"] = total_weight, count
        if codec.encrypted:
            bound = codec.params.error_bound(int(total_weight))  # type: ignore[attr-defined]
            r["quantization_error_bound"] = float(bound)
        last = r["round"]
    doc["heldout_examples"] = len(test)
    # data.validation_fraction > 0: the "held-out" set is a validation split (tuning runs).
    doc["heldout_set"] = "validation" if cfg.data.validation_fraction > 0 and not data else "test"
    doc["final_round"] = last
    if replay is not None:
        doc["distributed_replay"] = _compare_models(rd, doc["rounds"], replay.discarded)
    target = RunDir(Path(out)) if out else rd
    target.root.mkdir(parents=True, exist_ok=True)
    if last is not None:
        save_weights(model, target.model)
    if target.root != rd.root and not target.config.exists():
        from fedpriv.runs.folder import write_config

        write_config(cfg, target.root)
    atomic_write_text(target.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)
    return RunResult.from_run_dir(target.root)


def _compare_models(
    rd: RunDir, rounds: list[dict[str, Any]], discarded: list[int]
) -> dict[str, Any]:
    """Do the clients' signed model digests match the key holder's replay? (distributed DP)"""
    from fedpriv.privacy.ledger import read_chain

    after = {r["round"]: r["model_sha256"] for r in rounds if "model_sha256" in r}
    checked, mismatches = 0, []
    for e in read_chain(rd.ledger) if rd.ledger.exists() else []:
        rec = json.loads(e.get("client_record") or "{}")
        info = rec.get("distributed") or {}
        applied = info.get("applied_round")
        if rec.get("status") != "trained" or not applied:
            continue
        checked += 1
        if after.get(applied) != info.get("model_sha256"):
            mismatches.append({"round": e.get("round"), "client_id": e.get("client_id")})
    return {"records_checked": checked, "mismatches": mismatches, "discarded_rounds": discarded}
