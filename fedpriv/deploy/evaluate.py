"""``fedpriv client evaluate``: a key holder decrypts a run's global models and evaluates them.

The server only holds ``globals/round_NNN.bin`` (ciphertexts). Whoever holds the HE secret (a
client bundle, a device's state folder after the sealed relay, or the dealer folder) copies the
run folder, decrypts each round's aggregate, evaluates it on held-out data it has, and writes
the same fields simulation writes into ``metrics.json`` plus ``model.safetensors`` (the final
model in the clear: keep it with the data owners).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import CryptoError, RunFailedError
from fedpriv.fileio import atomic_write_text

__all__ = ["EvaluationResult", "evaluate_run", "key_dir_for"]


@dataclass(frozen=True)
class EvaluationResult:
    """Per-round held-out accuracy and where the outputs went."""

    out: Path
    rounds: list[dict[str, Any]]
    final_accuracy: float | None
    heldout_examples: int


def key_dir_for(
    *, bundle: Path | None = None, state_dir: Path | None = None, keys_dir: Path | None = None
) -> Path:
    """Find a folder with ``params.json`` + ``secret.key`` (HE key holder material).

    Order: ``keys_dir``; the verified client bundle (if it holds the secret); the device state
    folder's ``keys/`` (sealed delivery); the dealer folder (``he_secret.key``).
    """
    from fedpriv.deploy.bundle import verify_bundle

    if keys_dir is not None:
        return Path(keys_dir)
    # Threshold custody: the mask key finishes the combined decryptions the run folder holds.
    if bundle is not None:
        b = verify_bundle(bundle, kind="client")
        if b.has("secret.key") or b.has("mask.key"):
            return b.root
    if state_dir is not None:
        keys = Path(state_dir) / "keys"
        if (keys / "secret.key").exists() or (keys / "mask.key").exists():
            return keys
    raise CryptoError(
        "no HE secret found: give --bundle with a client bundle that holds secret.key (or, "
        "threshold custody, mask.key), or --state-dir of a device that received its sealed "
        "key, or --keys-dir (threshold custody: the dealer folder works too)"
    )


def _load_codec(key_dir: Path) -> Any:
    from fedpriv.crypto.codec import ClientCodec

    if (key_dir / "he_secret.key").exists() and not (key_dir / "secret.key").exists():
        from fedpriv.crypto import KeyHolder
        from fedpriv.crypto.codec import load_params_file

        params = load_params_file(key_dir / "params.json")
        return ClientCodec(params, KeyHolder.load(key_dir / "he_secret.key"))
    return ClientCodec.load(key_dir)


def evaluate_run(
    run_dir: Path,
    key_dir: Path,
    *,
    cfg: RunConfig | None = None,
    data: str | None = None,
    out: Path | None = None,
) -> EvaluationResult:
    """Decrypt and evaluate every round's global model of a deployed run.

    Parameters
    ----------
    run_dir : Path
        A copy of the server's run folder (``metrics.json``, ``globals/``).
    key_dir : Path
        Key holder material (see :func:`key_dir_for`).
    cfg : RunConfig, optional
        Default ``<run_dir>/config.toml`` (``fedpriv run`` writes it).
    data : str, optional
        Held-out data spec (a CSV, an MNIST folder...), used whole; default the config
        dataset's held-out split (what simulation evaluates on).
    out : Path, optional
        Where ``metrics.json`` (with held-out fields) and ``model.safetensors`` go
        (default ``run_dir``).

    Returns
    -------
    EvaluationResult
    """
    from fedpriv.data import load_dataset
    from fedpriv.models import build_model, evaluate, save_weights, set_flat_params
    from fedpriv.runs import RunDir

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    if not rd.metrics.exists():
        raise RunFailedError(f"{rd.metrics} not found: not a finished fedpriv run folder")
    if cfg is None:
        cfg = load_config(run_dir / "config.toml")
    codec = _load_codec(Path(key_dir))
    d = cfg.data
    train, test = load_dataset(
        d.dataset,
        label_column=d.label_column,
        holdout_fraction=d.holdout_fraction,
        seed=cfg.seed,
        max_samples=d.max_samples,
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
    for r in doc.get("rounds", []):
        path = rd.global_blob(int(r["round"]))
        if not path.exists():
            continue
        mean, total_weight, count = codec.decode(path.read_bytes())
        set_flat_params(model, mean)
        r["heldout_loss"], r["heldout_accuracy"] = evaluate(model, test)
        r["aggregate_total_weight"], r["aggregate_count"] = total_weight, count
        if codec.encrypted:
            r["quantization_error_bound"] = float(codec.params.error_bound(int(total_weight)))
        last = r["round"]
    doc["heldout_examples"] = len(test)
    doc["final_round"] = last
    target = Path(out) if out else run_dir
    target.mkdir(parents=True, exist_ok=True)
    if last is not None:
        save_weights(model, target / "model.safetensors")
    atomic_write_text(
        target / "metrics.json", json.dumps(doc, indent=2, sort_keys=True), mode=0o644
    )
    final = None
    for r in reversed(doc.get("rounds", [])):
        if r.get("heldout_accuracy") is not None:
            final = float(r["heldout_accuracy"])
            break
    return EvaluationResult(target, list(doc.get("rounds", [])), final, len(test))
