"""The ClientApp: a key holder that trains on local data and sends only encrypted updates.

Per train message: validate the instruction, decrypt the global model, check the privacy
budget *before* training, train with DP-SGD, persist the new accountant history (before the
update leaves, so a lost update is still charged), encrypt the pre-weighted update, reply.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedpriv.config import RunConfig, config_from_dict
from fedpriv.crypto.codec import ClientCodec
from fedpriv.crypto.identity import PrivateIdentity, load_private_identity, sign_update
from fedpriv.errors import ConfigError, CryptoError, WireError
from fedpriv.privacy.state import ClientPrivacyState
from fedpriv.protocol import (
    EvalReply,
    Instruction,
    TrainReply,
    build_eval_reply,
    build_train_reply,
    metrics_digest,
    parse_instruction,
)

__all__ = ["ClientSettings", "make_client_app"]

log = logging.getLogger("fedpriv.client")
_STATE_KEY = "fedpriv-privacy"
_PLAN_KEY = "fedpriv-sigma-plan"


@dataclass(frozen=True)
class ClientSettings:
    """Node-local settings: never sent by the server."""

    key_dir: Path
    state_root: Path | None = None
    """Folder under which each client persists its privacy state (``<root>/<client-id>/``);
    None keeps it in Flower's node state only (or the node config's ``state-dir``)."""
    data: str | None = None
    """A local dataset spec that replaces the run's (deployment: the device's own data)."""

    @classmethod
    def from_context(cls, context: Context) -> ClientSettings:
        from fedpriv.runs import FlowerRunConfig, RunDir

        nc = context.node_config
        rc = FlowerRunConfig.from_context(context)
        run_dir = RunDir(rc.run_folder(context.run_id))
        # node config: this client's own key folder; else (simulation via `flwr run`) the
        # dealer's output folder in the run config, or the keys the ServerApp dealt into the
        # run folder: every virtual client shares its client/ part.
        key_dir = str(nc.get("keys-dir", "") or "")
        if not key_dir:
            key_dir = str((Path(rc.keys_dir) if rc.keys_dir else run_dir.keys) / "client")
        data = str(nc.get("data", "") or "") or None
        return cls(Path(key_dir), run_dir.root / "clients", data)

    def state_dir(self, context: Context) -> Path | None:
        explicit = str(context.node_config.get("state-dir", "") or "")
        if explicit:
            return Path(explicit)
        if self.state_root is not None:
            return self.state_root / _client_id(context)
        return None


def _client_id(context: Context) -> str:
    nc = context.node_config
    if "client-id" in nc:
        return str(nc["client-id"])
    if "partition-id" in nc:
        return f"client-{int(nc['partition-id'])}"
    return f"node-{context.node_id}"


@functools.lru_cache(maxsize=4)
def _codec(key_dir: str) -> ClientCodec:
    return ClientCodec.load(Path(key_dir))


def _identity(settings: ClientSettings, context: Context) -> PrivateIdentity:
    """This client's identity key: node config ``identity-key``, else the dealer's folder."""
    explicit = str(context.node_config.get("identity-key", "") or "")
    path = (
        Path(explicit)
        if explicit
        else settings.key_dir / "identities" / f"{_client_id(context)}.pem"
    )
    return _load_identity(str(path))


@functools.lru_cache(maxsize=64)
def _load_identity(path: str) -> PrivateIdentity:
    return load_private_identity(Path(path))


def _partition(context: Context) -> tuple[int, int]:
    nc = context.node_config
    try:
        return int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1))
    except (TypeError, ValueError):
        raise ConfigError(
            "client: node config partition-id/num-partitions must be integers"
        ) from None


def _read_instruction(msg: Message, codec: ClientCodec) -> tuple[Instruction, RunConfig]:
    limit = 4 * int(getattr(codec.params, "max_blob_bytes", 1 << 28)) + (1 << 20)
    ins = parse_instruction(msg.content, max_blob_bytes=limit)
    if ins.params_fingerprint != codec.params.fingerprint():
        raise CryptoError(
            "the server's parameters do not match this client's keys (different key set?)"
        )
    try:
        raw = json.loads(ins.config_json)
    except json.JSONDecodeError:
        raise WireError("instruction: run config is not valid JSON") from None
    if not isinstance(raw, dict):
        raise WireError("instruction: run config must be a JSON object")
    return ins, config_from_dict(raw)


def _local_data(cfg: RunConfig, settings: ClientSettings, context: Context) -> tuple[Any, Any]:
    from fedpriv.data import client_datasets, load_dataset

    d = cfg.data
    spec = settings.data or d.dataset
    train, _ = load_dataset(
        spec,
        label_column=d.label_column,
        holdout_fraction=d.holdout_fraction,
        seed=cfg.seed,
        max_samples=d.max_samples,
    )
    if settings.data:
        pid, n = 0, 1  # the device's own data is its whole partition
    else:
        pid, n = _partition(context)
    return client_datasets(
        train,
        pid,
        n,
        partitioner=d.partitioner,
        alpha=d.alpha,
        classes_per_partition=d.classes_per_partition,
        test_fraction=d.test_fraction,
        seed=cfg.seed,
    )


def _model(
    cfg: RunConfig, codec: ClientCodec, ins: Instruction, shape: tuple[int, ...], num_classes: int
) -> Any:
    from fedpriv.models import build_model, set_flat_params

    model = build_model(cfg.train.model, shape, num_classes, seed=cfg.seed)
    if ins.global_blob is not None:
        mean, _, _ = codec.decode(ins.global_blob)
        set_flat_params(model, mean)
    return model


def _load_state(cfg: RunConfig, settings: ClientSettings, context: Context) -> ClientPrivacyState:
    p = cfg.privacy
    sdir = settings.state_dir(context)
    if sdir is not None:
        return ClientPrivacyState.load_or_new(sdir / "privacy_state.json", p.accountant, p.delta)
    if _STATE_KEY in context.state.config_records:
        text = context.state.config_records[_STATE_KEY].get("json", "")
        return ClientPrivacyState.from_json(str(text), source="node state")
    return ClientPrivacyState(p.accountant, p.delta)


def _save_state(state: ClientPrivacyState, settings: ClientSettings, context: Context) -> None:
    context.state.config_records[_STATE_KEY] = ConfigRecord({"json": state.to_json()})
    sdir = settings.state_dir(context)
    if sdir is not None:
        state.save(sdir / "privacy_state.json")


def _planned_sigma(cfg: RunConfig, num_examples: int, context: Context) -> float:
    """Plan sigma once per client and run (planning costs seconds with PRV); cache in node state."""
    from fedpriv.privacy import noise_multiplier_for

    p = cfg.privacy
    key = json.dumps(
        [
            p.noise_multiplier,
            p.target_epsilon,
            p.delta,
            p.accountant,
            cfg.rounds,
            num_examples,
            cfg.train.batch_size,
            cfg.train.local_epochs,
        ]
    )
    rec = context.state.config_records.get(_PLAN_KEY)
    if rec is not None and rec.get("key") == key:
        return float(rec["sigma"])  # type: ignore[arg-type]
    sigma = noise_multiplier_for(cfg, num_examples)
    context.state.config_records[_PLAN_KEY] = ConfigRecord({"key": key, "sigma": sigma})
    return sigma


def handle_train(msg: Message, context: Context, settings: ClientSettings) -> Message:
    from fedpriv.models import get_flat_params
    from fedpriv.privacy import check_budget, train_local

    codec = _codec(str(settings.key_dir))
    ins, cfg = _read_instruction(msg, codec)
    train, _test = _local_data(cfg, settings, context)
    pid, _ = _partition(context)
    cid = _client_id(context)
    state = _load_state(cfg, settings, context)
    metrics: dict[str, float | int] = {
        # Under encryption n_k travels only inside the ciphertext: 0 here means "not disclosed".
        "num-examples": 0 if codec.encrypted else len(train),
        "steps": 0,
        "clipped": 0,
        "weight-used": 0,
        "refused": 0,
        "update-bytes": 0,
        "epsilon": state.epsilon() if cfg.record_dp else 0.0,
        "noise-multiplier": 0.0,
        "sample-rate": 0.0,
        "train-loss": 0.0,
        "train-seconds": 0.0,
        "encrypt-seconds": 0.0,
        "update-clipped": 0,
        "client-epsilon": 0.0,
    }
    history_json = json.dumps(state.to_dict()["history"])
    plan = None
    if cfg.client_dp:
        from fedpriv.privacy.client_level import client_level_epsilon, client_level_plan

        plan = client_level_plan(cfg)
        p = cfg.privacy
        eps_c = client_level_epsilon(plan, ins.server_round, p.client_delta, p.accountant)
        metrics["client-epsilon"] = client_level_epsilon(
            plan, ins.server_round - 1, p.client_delta, p.accountant
        )
        if eps_c > p.client_max_epsilon * (1 + 1e-9):
            metrics["refused"] = 1
            why = (
                f"refused: round {ins.server_round} would raise the run's client-level epsilon "
                f"to {eps_c:.3f}, past client_max_epsilon {p.client_max_epsilon:g}"
            )
            reply = TrainReply(metrics, None, why, "", history_json, cid)
            return Message(build_train_reply(reply), reply_to=msg)
    if cfg.record_dp:
        decision = check_budget(cfg, state, len(train), _planned_sigma(cfg, len(train), context))
        if not decision.allowed:
            metrics["refused"] = 1
            log.warning("client %s: %s", cid, decision.reason)
            reply = TrainReply(metrics, None, decision.reason, "", history_json, cid)
            return Message(build_train_reply(reply), reply_to=msg)
        sigma = decision.event.noise_multiplier
    else:
        sigma = 0.0
    model = _model(cfg, codec, ins, train.input_shape, train.num_classes)
    start_vec = get_flat_params(model)
    t0 = time.perf_counter()
    res = train_local(
        model,
        train,
        train=cfg.train,
        privacy=cfg.privacy,
        noise_multiplier=sigma,
        seed=cfg.seed * 1_000_003 + pid * 1009 + ins.server_round,
    )
    metrics["train-seconds"] = time.perf_counter() - t0
    metrics["steps"] = res.steps
    metrics["train-loss"] = res.train_loss if res.train_loss == res.train_loss else 0.0
    if res.event is not None:
        # Persist the charge before anything leaves: a lost update still counts as spent.
        state = state.with_event(res.event, ins.server_round)
        _save_state(state, settings, context)
        metrics["epsilon"] = state.epsilon()
        metrics["noise-multiplier"] = res.event.noise_multiplier
        metrics["sample-rate"] = res.event.sample_rate
    values, weight, noise_std = get_flat_params(model), len(train), 0.0
    if plan is not None:
        from fedpriv.privacy.client_level import clip_update

        # Client-level DP: bound the whole update, count every client once, add a noise share.
        delta, was_clipped = clip_update(values.astype(np.float64) - start_vec, plan.clip_norm)
        values = (start_vec + delta).astype(np.float32)
        weight, noise_std = 1, plan.share_std
        metrics["update-clipped"] = int(was_clipped)
        metrics["client-epsilon"] = client_level_epsilon(
            plan, ins.server_round, cfg.privacy.client_delta, cfg.privacy.accountant
        )
    t0 = time.perf_counter()
    # Reproducible mode (noise_seed >= 0, tests only) also fixes the stochastic rounding.
    rounding_seed = None
    if cfg.privacy.noise_seed >= 0:
        rounding_seed = cfg.privacy.noise_seed * 7919 + pid * 104_729 + ins.server_round
    upd = codec.encode(values, weight, noise_std, rounding_seed)
    metrics["encrypt-seconds"] = time.perf_counter() - t0
    metrics["clipped"] = upd.clipped
    metrics["weight-used"] = 0 if codec.encrypted else upd.weight_used
    metrics["update-bytes"] = len(upd.blob)
    digest = hashlib.sha256(upd.blob).hexdigest()
    history_json = json.dumps(state.to_dict()["history"])
    bound = f"{digest}:{metrics_digest(metrics)}"
    signature = sign_update(_identity(settings, context), ins.run_id, ins.server_round, cid, bound)
    reply = TrainReply(metrics, upd.blob, "", digest, history_json, cid, signature)
    return Message(build_train_reply(reply), reply_to=msg)


def handle_evaluate(msg: Message, context: Context, settings: ClientSettings) -> Message:
    from fedpriv.models import evaluate

    codec = _codec(str(settings.key_dir))
    ins, cfg = _read_instruction(msg, codec)
    _train, test = _local_data(cfg, settings, context)
    model = _model(
        cfg, codec, ins, test.input_shape if len(test) else _train.input_shape, _train.num_classes
    )
    loss, acc = evaluate(model, test)
    if len(test) == 0:
        loss, acc = 0.0, 0.0
    return Message(build_eval_reply(EvalReply(len(test), loss, acc)), reply_to=msg)


def make_client_app(settings: ClientSettings | None = None) -> ClientApp:
    """Build the ClientApp. ``settings=None`` reads them from the node/run config (``flwr run``)."""
    app = ClientApp()

    def _settings(context: Context) -> ClientSettings:
        return settings if settings is not None else ClientSettings.from_context(context)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, _settings(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, _settings(context))

    return app
