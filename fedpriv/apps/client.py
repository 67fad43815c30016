"""The ClientApp: a key holder that trains on local data and sends only encrypted updates.

The server's instruction is a *request*. Per train message the client:

1. reads the request and reviews it against the device's own :class:`DevicePolicy` (modes,
   schemes, delta, noise, clip norm, k_min): anything weaker than the policy is refused;
2. decrypts the global model and checks it (summed from at least k_min updates, weights
   consistent, values in the public range) before training from it;
3. checks the privacy budget *before* training (this run's epsilon, capped by the stricter of
   the request and the policy, and the device's lifetime epsilon);
4. trains with DP-SGD, all randomness from the device's CSPRNG;
5. encrypts the pre-weighted update (client-level DP: clipped, plus a discrete-Gaussian share);
6. signs a client record (run, round, node, update and metrics digests, DP history, epsilon,
   the hash of its previous record) and persists the charge and the record chain *before*
   the reply leaves, so a lost update is still charged.

Every refusal is a signed record too, so the ledger shows it and the server cannot hide it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedpriv.config import RunConfig, config_from_dict, load_config
from fedpriv.crypto.codec import ClientCodec
from fedpriv.crypto.identity import PrivateIdentity, load_private_identity, sign_record
from fedpriv.data.schema import check_client_data, client_label_set
from fedpriv.errors import ConfigError, CryptoError, WireError
from fedpriv.privacy.ledger import EVAL_FORMAT, RECORD_FORMAT, make_record
from fedpriv.privacy.policy import DevicePolicy, EffectiveLimits
from fedpriv.privacy.rng import DpRandom, dp_random
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
# Config keys a server may never set: DP randomness is the device's alone.
_FORBIDDEN_REQUEST_KEYS = {"privacy": ("noise_seed",), "device": None}


@dataclass(frozen=True)
class ClientSettings:
    """Node-local settings: never sent by the server."""

    key_dir: Path
    state_root: Path | None = None
    """Folder under which each client persists its privacy state (``<root>/<client-id>/``);
    None keeps it in Flower's node state only (or the node config's ``state-dir``)."""
    data: str | None = None
    """A local dataset spec that replaces the run's (deployment: the device's own data)."""
    policy: DevicePolicy | None = None
    """The device owner's privacy policy; None: built from the device's own copy of the
    experiment (simulation), see :meth:`DevicePolicy.from_config`."""
    insecure_test_seed: int | None = None
    """Reproducible DP randomness for tests, set by the device itself. Runs using it are
    marked not private in every record, the report and ``fedpriv report verify``."""

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
        policy_path = str(nc.get("policy", "") or "")
        if policy_path:
            policy = DevicePolicy.load(Path(policy_path))
        else:
            # Simulation through `flwr run`: the virtual device holds the experiment itself (as
            # the run folder records it once sized to the federation, else the submitted file).
            exp = run_dir.config if run_dir.config.exists() else rc.fedpriv_config or None
            policy = DevicePolicy.from_config(load_config(exp))
        seed_raw = nc.get("insecure-test-seed", None)
        seed = None if seed_raw in (None, "") else int(str(seed_raw))
        return cls(Path(key_dir), run_dir.root / "clients", data, policy, seed)

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


def _read_instruction(msg: Message, codec: ClientCodec) -> tuple[Instruction, RunConfig, str]:
    """Parse and check the instruction; returns (instruction, requested config, refusal or "")."""
    limit = 4 * int(getattr(codec.params, "max_blob_bytes", 1 << 28)) + (1 << 20)
    ins = parse_instruction(msg.content, max_blob_bytes=limit)
    if ins.params_fingerprint != codec.params.fingerprint():
        raise CryptoError(
            "the server's parameters do not match this client's keys (different key set?)"
        )
    cfg, refusal = _request_config(ins)
    return ins, cfg, refusal


def _request_config(ins: Instruction) -> tuple[RunConfig, str]:
    """Parse the run config the server sent.

    Keys a server may never set (a noise seed, the device policy) make the request a refusal;
    they are stripped so the rest of the request can still be recorded with the refusal.
    """
    try:
        raw = json.loads(ins.config_json)
    except json.JSONDecodeError:
        raise WireError("instruction: run config is not valid JSON") from None
    if not isinstance(raw, dict):
        raise WireError("instruction: run config must be a JSON object")
    refusal = ""
    for section, keys in _FORBIDDEN_REQUEST_KEYS.items():
        sub = raw.get(section)
        if sub is None:
            continue
        if keys is None:
            refusal = (
                f"the run tries to set this device's policy ([{section}]): only the device's "
                "owner sets it"
            )
            del raw[section]
        elif isinstance(sub, dict):
            for k in keys:
                if k in sub:
                    refusal = (
                        f"the run asks for a fixed {section}.{k}: DP randomness comes only from "
                        "this device's OS CSPRNG, never from the server"
                    )
                    del sub[k]
    try:
        return config_from_dict(raw), refusal
    except ConfigError as exc:
        raise WireError(f"instruction: invalid run config ({'; '.join(exc.errors)})") from None


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
        validation_fraction=d.validation_fraction,
        # the schema's label order is the class order: a device missing a class builds the
        # same model, and a label outside the set is an error, never a new class
        labels=client_label_set(cfg, settings.data, context.node_config),
    )
    if settings.data:  # the device's own data is its whole partition: no partitioner
        from fedpriv.data import local_split

        return local_split(train, test_fraction=d.test_fraction, seed=cfg.seed)
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
    cfg: RunConfig, mean: np.ndarray | None, shape: tuple[int, ...], num_classes: int
) -> Any:
    from fedpriv.models import build_model, set_flat_params

    model = build_model(cfg.train.model, shape, num_classes, seed=cfg.seed)
    if mean is not None:
        set_flat_params(model, mean)
    return model


def _checked_global(
    cfg: RunConfig, codec: ClientCodec, ins: Instruction, limits: EffectiveLimits
) -> tuple[np.ndarray | None, int, str]:
    """Decrypt the global model and check it before anything trains or evaluates from it.

    Returns ``(mean or None in round 1, number of summands, refusal or "")``. The aggregate must
    sum at least ``k_min`` updates (fewer would be one client's update, or carry too few noise
    shares); client-level runs weight every client 1, so the total weight must equal the count.
    Values outside the public range were already refused by the codec (wrong key or a
    malformed summand).
    """
    if ins.global_blob is None:
        return None, 0, ""
    mean, total, count = codec.decode(ins.global_blob)
    if count < limits.k_min:
        return (
            None,
            count,
            (
                f"aggregate refused: it sums {count} update(s), this device requires at least "
                f"{limits.k_min}"
            ),
        )
    if cfg.client_dp and not math.isclose(total, count):
        return (
            None,
            count,
            (
                f"aggregate refused: total weight {total:g} differs from its {count} summands "
                "(client-level DP weights every client 1)"
            ),
        )
    if not np.all(np.isfinite(mean)):
        return None, count, "aggregate refused: non-finite values"
    return mean, count, ""


def _load_state(cfg: RunConfig, settings: ClientSettings, context: Context) -> ClientPrivacyState:
    """This device's privacy state (its file, else Flower's node state, else fresh)."""
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
    """Plan sigma and the epsilon after each round once per client and run (seconds of PRV);
    kept in node state, and primes the accountant's memo (:mod:`fedpriv.privacy.plan`)."""
    from fedpriv.privacy.plan import load_or_make_plan

    plan, made = load_or_make_plan(cfg, num_examples, context.state.config_records.get(_PLAN_KEY))
    if made:
        context.state.config_records[_PLAN_KEY] = ConfigRecord(plan.to_record())
    plan.prime()
    return plan.sigma


def _empty_metrics(state_eps: float) -> dict[str, float | int]:
    return {
        # Under encryption n_k travels only inside the ciphertext: 0 here means "not disclosed".
        "num-examples": 0,
        "steps": 0,
        "clipped": 0,
        "weight-used": 0,
        "refused": 0,
        "update-bytes": 0,
        "update-clipped": 0,
        "epsilon": state_eps,
        "noise-multiplier": 0.0,
        "sample-rate": 0.0,
        "train-loss": 0.0,
        "train-seconds": 0.0,
        "encrypt-seconds": 0.0,
        "client-epsilon": 0.0,
    }


@dataclass
class _Round:
    """One train request as the device handles it (what the signed record will say)."""

    ins: Instruction
    cfg: RunConfig
    cid: str
    node_id: int
    rng: DpRandom
    state: ClientPrivacyState
    metrics: dict[str, float | int]
    event: list[float | int] | None = None
    client_level: dict[str, Any] | None = None
    aggregate_count: int = 0
    extra: dict[str, Any] | None = None
    """More signed fields (privacy mode ``distributed``: its plan, model digest, catch-up)."""


def _reply(
    r: _Round,
    settings: ClientSettings,
    context: Context,
    msg: Message,
    *,
    blob: bytes | None = None,
    refusal: str = "",
) -> Message:
    """Sign this round's client record, persist charge and chain, then build the reply."""
    run = r.state.run(r.ins.run_id)
    if refusal:
        r.metrics["refused"] = 1
        log.warning("client %s: %s", r.cid, refusal)
    p = r.cfg.privacy
    fields: dict[str, Any] = {
        "run_id": r.ins.run_id,
        "round": r.ins.server_round,
        "client_id": r.cid,
        "node_id": r.node_id,
        "seq": run.seq,
        "prev": run.head,
        "status": "refused" if refusal else "trained",
        "reason": refusal,
        "privacy_mode": p.mode,
        "event": r.event,
        "history": [e.as_list() for e in run.history],
        "epsilon": r.state.run_epsilon(r.ins.run_id) if r.cfg.record_level else 0.0,
        "lifetime_epsilon": r.state.epsilon() if r.cfg.record_level else 0.0,
        "delta": p.delta,
        "accountant": p.accountant,
        "rng": r.rng.name,
        "client_level": r.client_level,
        "aggregate_count": r.aggregate_count,
        "update_sha256": hashlib.sha256(blob).hexdigest() if blob is not None else "",
        "update_bytes": len(blob) if blob is not None else 0,
        "metrics_sha256": metrics_digest(r.metrics),
        **(r.extra or {}),
    }
    record, digest = make_record(RECORD_FORMAT, fields)
    signature = sign_record(_identity(settings, context), digest)
    state = r.state.with_record(r.ins.run_id, record, digest, signature.hex())
    # Persist the charge and the record chain before anything leaves: a lost reply still counts.
    _save_state(state, settings, context)
    reply = TrainReply(r.metrics, blob, refusal, r.cid, record, signature)
    return Message(build_train_reply(reply), reply_to=msg)


def handle_train(msg: Message, context: Context, settings: ClientSettings) -> Message:
    from fedpriv.models import get_flat_params
    from fedpriv.privacy import check_budget, train_local

    codec = _codec(str(settings.key_dir))
    ins, cfg, refusal = _read_instruction(msg, codec)
    policy = settings.policy or DevicePolicy.from_config(cfg)
    state = _load_state(cfg, settings, context)
    rng = dp_random(settings.insecure_test_seed, _client_id(context), ins.server_round)
    r = _Round(
        ins,
        cfg,
        _client_id(context),
        int(context.node_id),
        rng,
        state,
        _empty_metrics(state.run_epsilon(ins.run_id) if cfg.record_level else 0.0),
    )
    if refusal:
        return _reply(r, settings, context, msg, refusal=refusal)
    checked = check_client_data(cfg, settings.data, context.node_config)
    if not checked.ok:  # refuse before training: only the names of the failed checks leave
        return _reply(r, settings, context, msg, refusal=checked.reason)
    train, _test = _local_data(cfg, settings, context)
    sigma = _planned_sigma(cfg, len(train), context) if cfg.record_dp else None
    if cfg.distributed_dp:  # distributed record-level DP: fedpriv/apps/distributed_client.py
        from fedpriv.apps import distributed_client as dist

        sigma = dist.plan_for(cfg, codec).sigma_effective
    violations = policy.review(cfg, sigma)
    if violations:
        return _reply(r, settings, context, msg, refusal="policy: " + "; ".join(violations))
    limits = policy.limits(cfg)
    if cfg.distributed_dp:
        return dist.train_distributed(r, msg, context, settings, codec, limits, train)
    mean, r.aggregate_count, why = _checked_global(cfg, codec, ins, limits)
    if why:
        return _reply(r, settings, context, msg, refusal=why)
    plan = None
    if cfg.client_dp:
        from fedpriv.privacy.client_level import (
            client_level_epsilon,
            client_level_epsilon_vs_server,
            client_level_plan,
            rounding_norm,
        )

        plan = client_level_plan(
            cfg, rounding_norm(int(codec.params.num_values), codec.quant_scale)
        )
        if plan.rounding_norm > plan.clip_norm:
            raise CryptoError(
                f"client-level DP: the quantization scale {codec.quant_scale:g} is too coarse "
                f"(rounding adds up to {plan.rounding_norm:.3g} to a {plan.clip_norm:g}-norm "
                "update); deal keys with more coefficient-modulus bits"
            )
        p = cfg.privacy
        eps_c = client_level_epsilon(plan, ins.server_round, p.client_delta)
        r.metrics["client-epsilon"] = client_level_epsilon(
            plan, ins.server_round - 1, p.client_delta
        )
        if eps_c > limits.client_max_epsilon * (1 + 1e-9):
            why = (
                f"refused: round {ins.server_round} would raise the run's client-level epsilon "
                f"to {eps_c:.3f}, past {limits.client_max_epsilon:g}"
            )
            return _reply(r, settings, context, msg, refusal=why)
    if cfg.record_dp:
        assert sigma is not None
        decision = check_budget(
            cfg,
            state,
            ins.run_id,
            len(train),
            sigma,
            max_epsilon=limits.max_epsilon,
            max_lifetime_epsilon=limits.max_lifetime_epsilon,
        )
        if not decision.allowed:
            return _reply(r, settings, context, msg, refusal=decision.reason)
        sigma = decision.event.noise_multiplier
    model = _model(cfg, mean, train.input_shape, train.num_classes)
    start_vec = get_flat_params(model)
    t0 = time.perf_counter()
    res = train_local(
        model, train, train=cfg.train, privacy=cfg.privacy, noise_multiplier=sigma or 0.0, rng=rng
    )
    r.metrics["train-seconds"] = time.perf_counter() - t0
    r.metrics["steps"] = res.steps
    r.metrics["train-loss"] = res.train_loss if math.isfinite(res.train_loss) else 0.0
    if res.event is not None:
        r.state = r.state.with_event(res.event, ins.server_round, ins.run_id)
        r.event = res.event.as_list()
        r.metrics["epsilon"] = r.state.run_epsilon(ins.run_id)
        r.metrics["noise-multiplier"] = res.event.noise_multiplier
        r.metrics["sample-rate"] = res.event.sample_rate
    values, weight, noise_std = get_flat_params(model), len(train), 0.0
    if plan is not None:
        from fedpriv.privacy.client_level import clip_update

        # Client-level DP: bound the whole update, count every client once, add a noise share.
        delta, was_clipped = clip_update(values.astype(np.float64) - start_vec, plan.clip_norm)
        values = (start_vec + delta).astype(np.float32)
        weight, noise_std = 1, plan.share_std
        participations = 1 + sum(
            1 for rr in r.state.run(ins.run_id).rounds_trained if rr != ins.server_round
        )
        p = cfg.privacy
        r.metrics["update-clipped"] = int(was_clipped)
        r.metrics["client-epsilon"] = client_level_epsilon(plan, ins.server_round, p.client_delta)
        r.client_level = {
            "noise_multiplier": plan.noise_multiplier,
            "sensitivity": plan.sensitivity,
            "share_std": plan.share_std,
            "k_min": plan.k_min,
            "epsilon": r.metrics["client-epsilon"],
            "epsilon_vs_server": client_level_epsilon_vs_server(
                plan, participations, p.client_delta
            ),
            "participations": participations,
        }
        if res.event is None:
            # Client-level only: record the participation in this run's rounds.
            r.state = r.state.with_participation(ins.run_id, ins.server_round)
    t0 = time.perf_counter()
    upd = codec.encode(values, weight, noise_std, rng)
    r.metrics["encrypt-seconds"] = time.perf_counter() - t0
    r.metrics["clipped"] = upd.clipped
    r.metrics["num-examples"] = 0 if codec.encrypted else len(train)
    r.metrics["weight-used"] = 0 if codec.encrypted else upd.weight_used
    r.metrics["update-bytes"] = len(upd.blob)
    return _reply(r, settings, context, msg, blob=upd.blob)


def handle_evaluate(msg: Message, context: Context, settings: ClientSettings) -> Message:
    """Evaluate the global model on the local test split; the reply is a signed eval record.

    The same request review and aggregate checks as for training apply: a request outside the
    policy, or an aggregate of too few updates, is answered with a signed refusal (no metrics).
    """
    from fedpriv.models import evaluate

    codec = _codec(str(settings.key_dir))
    ins, cfg, refusal = _read_instruction(msg, codec)
    policy = settings.policy or DevicePolicy.from_config(cfg)
    cid = _client_id(context)
    n, loss, acc = 0, 0.0, 0.0
    if not refusal:
        violations = policy.review(cfg)
        refusal = "policy: " + "; ".join(violations) if violations else ""
    if not refusal:
        checked = check_client_data(cfg, settings.data, context.node_config)
        refusal = "" if checked.ok else checked.reason
    if not refusal and cfg.distributed_dp:  # the device's own model, after catching up
        from fedpriv.apps import distributed_client as dist

        train, test = _local_data(cfg, settings, context)
        state = _load_state(cfg, settings, context)
        rng = dp_random(settings.insecure_test_seed, cid, ins.server_round)
        r = _Round(ins, cfg, cid, int(context.node_id), rng, state, {})
        own, refusal = dist.current_params(
            cfg, codec, r, settings, context, policy.limits(cfg), train
        )
        if not refusal and len(test):
            model = _model(cfg, own, test.input_shape, train.num_classes)
            loss, acc = evaluate(model, test)
            n = len(test)
    elif not refusal:
        mean, _count, refusal = _checked_global(cfg, codec, ins, policy.limits(cfg))
        if not refusal:
            train, test = _local_data(cfg, settings, context)
            if len(test):
                model = _model(cfg, mean, test.input_shape, train.num_classes)
                loss, acc = evaluate(model, test)
                n = len(test)
    if refusal:
        log.warning("client %s: evaluation %s", cid, refusal)
    fields = {
        "run_id": ins.run_id,
        "round": ins.server_round,
        "client_id": cid,
        "node_id": int(context.node_id),
        "status": "refused" if refusal else "evaluated",
        "reason": refusal,
        "num_examples": n,
        "loss": loss,
        "accuracy": acc,
    }
    record, digest = make_record(EVAL_FORMAT, fields)
    signature = sign_record(_identity(settings, context), digest)
    reply = EvalReply(n, loss, acc, cid, record, signature)
    return Message(build_eval_reply(reply), reply_to=msg)


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

    @app.train("decrypt")
    def _decrypt(msg: Message, context: Context) -> Message:
        from fedpriv.apps.decrypt import handle_decrypt  # threshold custody only

        return handle_decrypt(msg, context, _settings(context))

    return app
