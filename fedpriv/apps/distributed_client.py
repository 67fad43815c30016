"""The client side of privacy mode ``distributed`` (see :mod:`fedpriv.privacy.distributed`).

Per train request the device:

1. catches up: decrypts every aggregate it has not applied yet (oldest first), checks its count
   slot (at least k_min summands, each weighted 1; fewer: the round is discarded, and charged
   again at the noise it really carried if this device contributed to it) and takes that round's
   optimizer step; then persists model, momentum and the last applied round *before* replying;
2. refuses if it is still behind (the server sends the rest next round), or if one more step
   would pass its budget (the central accountant over ``(sigma_effective, q, steps)``);
3. draws its Poisson batch at the common rate q from the CSPRNG, sums per-example clipped
   gradients (Opacus, no Opacus noise), clips coordinates to the public range, and encodes the
   sum in units of C with its discrete-Gaussian noise share (stochastic rounding and noise from
   the CSPRNG) under BFV;
4. charges the central event ``(sigma_effective, q, 1)`` and signs a record naming it, the model
   digest it computed the gradient at, and the plan.

The batch size and the training loss are not disclosed: only the noisy encrypted sum leaves.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fedpriv.errors import CryptoError, StateError, WireError
from fedpriv.fileio import atomic_write_bytes
from fedpriv.privacy.accounting import DpEvent, opacus_epsilon
from fedpriv.privacy.distributed import (
    DistributedPlan,
    OptimizerState,
    apply_aggregate,
    clip_coordinates,
    clipped_gradient_sum,
    distributed_plan,
    poisson_batch,
)

if TYPE_CHECKING:
    from fedpriv.apps.client import ClientSettings, _Round
    from fedpriv.config import RunConfig
    from fedpriv.crypto.codec import ClientCodec
    from fedpriv.data import ArrayDataset
    from fedpriv.privacy.policy import EffectiveLimits

__all__ = ["current_params", "plan_for", "train_distributed"]

log = logging.getLogger("fedpriv.client")
_MODEL_KEY = "fedpriv-distributed-model"
# Encoding may add this much (units of C) to the sensitivity; more means keys too coarse.
_MAX_ROUNDING = 0.05


@functools.lru_cache(maxsize=16)
def _plan(config_json: str, params_json: str) -> DistributedPlan:
    import json

    from fedpriv.config import config_from_dict
    from fedpriv.crypto.codec import params_from_dict

    return distributed_plan(
        config_from_dict(json.loads(config_json)), params_from_dict(json.loads(params_json))
    )


def plan_for(cfg: RunConfig, codec: ClientCodec) -> DistributedPlan:
    """The run's plan on this device's public parameters (memoized: planning sigma takes s)."""
    import json

    from fedpriv.config import config_to_dict

    doc = config_to_dict(cfg)
    doc.pop("device", None)
    plan = _plan(
        json.dumps(doc, sort_keys=True), json.dumps(codec.params.to_dict(), sort_keys=True)
    )
    if plan.rounding_norm > _MAX_ROUNDING:
        raise CryptoError(
            f"distributed DP: the quantization scale {plan.quant_scale:g} is too coarse (encoding"
            f" adds up to {plan.rounding_norm:.3g} x C to the sensitivity); deal keys with more"
            " plaintext-modulus bits or a smaller encryption.value_range"
        )
    return plan


# --------------------------------------------------------------------------- model state


def _initial(cfg: RunConfig, shape: tuple[int, ...], num_classes: int) -> OptimizerState:
    from fedpriv.models import build_model, get_flat_params

    w = get_flat_params(build_model(cfg.train.model, shape, num_classes, seed=cfg.seed))
    return OptimizerState(w.astype(np.float64), np.zeros(w.size, dtype=np.float64), 0)


def _run_tag(run_id: str) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(run_id.encode()).digest(), dtype=np.uint8).copy()


def _state_file(settings: ClientSettings, context: Context, run_id: str) -> Path | None:
    sdir = settings.state_dir(context)
    if sdir is None:
        return None
    return sdir / f"distributed-{hashlib.sha256(run_id.encode()).hexdigest()[:32]}.safetensors"


def _load_model(
    cfg: RunConfig,
    settings: ClientSettings,
    context: Context,
    run_id: str,
    shape: tuple[int, ...],
    num_classes: int,
) -> OptimizerState:
    from safetensors.numpy import load

    path = _state_file(settings, context, run_id)
    raw: bytes | None = None
    if path is not None and path.exists():
        raw = path.read_bytes()
    elif path is None and _MODEL_KEY in context.state.config_records:
        rec = context.state.config_records[_MODEL_KEY]
        raw = bytes(rec.get("blob", b""))  # type: ignore[arg-type]
    init = _initial(cfg, shape, num_classes)
    if raw is None:
        return init
    try:
        arrays = load(raw)
    except Exception as exc:  # safetensors raises its own error types
        raise StateError(f"distributed model state: unreadable ({exc})") from None
    if not np.array_equal(arrays.get("run", np.zeros(0, np.uint8)), _run_tag(run_id)):
        raise StateError("distributed model state belongs to another run")
    return OptimizerState.from_arrays(arrays, init.params.size)


def _save_model(
    st: OptimizerState, settings: ClientSettings, context: Context, run_id: str
) -> None:
    from safetensors.numpy import save

    raw = save({**st.to_arrays(), "run": _run_tag(run_id)})
    path = _state_file(settings, context, run_id)
    if path is not None:
        atomic_write_bytes(path, raw)
    else:
        context.state.config_records[_MODEL_KEY] = ConfigRecord({"blob": raw})


# --------------------------------------------------------------------------- catching up


def _catch_up(
    r: _Round,
    plan: DistributedPlan,
    codec: ClientCodec,
    st: OptimizerState,
    k_min: int,
) -> list[dict[str, Any]]:
    """Apply the instruction's aggregates newer than ``st``; return the rounds discarded."""
    cfg, ins = r.cfg, r.ins
    discarded: list[dict[str, Any]] = []
    contributed = set(r.state.run(ins.run_id).rounds_trained)
    for rnd, blob in ins.aggregates:
        if rnd <= st.applied_round:
            continue  # already applied (the server did not hear back in time)
        if rnd >= ins.server_round:
            raise WireError(f"instruction: aggregate of round {rnd} in round {ins.server_round}")
        mean, total, count = codec.decode(blob)
        why = ""
        if count < k_min:
            why = f"sums {count} update(s), fewer than k_min = {k_min}"
            if rnd in contributed:
                # Its release carried only `count` shares: charge that too (conservatively on
                # top of the event already charged for the round).
                f = math.sqrt(count / k_min)
                ev = DpEvent(plan.sigma_effective * f, plan.sample_rate, 1)
                r.state = r.state.with_charge(ev, ins.run_id)
        elif not math.isclose(total, count):
            why = f"total weight {total:g} differs from its {count} summands (each weighs 1)"
        elif not np.all(np.isfinite(mean)):
            why = "non-finite values"
        if why:
            discarded.append({"round": rnd, "count": count, "reason": why})
            st.applied_round = rnd  # processed: no step is taken from it
            continue
        apply_aggregate(st, mean.astype(np.float64) * total, plan, cfg.train, rnd, cfg.rounds)
    return discarded


def current_params(
    cfg: RunConfig,
    codec: ClientCodec,
    r: _Round,
    settings: ClientSettings,
    context: Context,
    limits: EffectiveLimits,
    train: ArrayDataset,
) -> tuple[np.ndarray, str]:
    """The model after the instruction's aggregates (evaluation), and a refusal or ``""``."""
    from fedpriv.apps.client import _save_state

    plan = plan_for(cfg, codec)
    st = _load_model(cfg, settings, context, r.ins.run_id, train.input_shape, train.num_classes)
    before = r.state
    _catch_up(r, plan, codec, st, limits.k_min)
    _save_model(st, settings, context, r.ins.run_id)
    if r.state is not before:  # a discarded short aggregate was charged: persist it
        _save_state(r.state, settings, context)
    if st.applied_round < r.ins.latest_aggregate:
        return st.params.astype(np.float32), "still catching up: not evaluated"
    return st.params.astype(np.float32), ""


# --------------------------------------------------------------------------- one round


def train_distributed(
    r: _Round,
    msg: Message,
    context: Context,
    settings: ClientSettings,
    codec: ClientCodec,
    limits: EffectiveLimits,
    train: ArrayDataset,
) -> Message:
    """One distributed DP-SGD round on this device (see the module docstring)."""
    import time

    from fedpriv.apps.client import _reply
    from fedpriv.models import build_model, set_flat_params

    cfg, ins = r.cfg, r.ins
    plan = plan_for(cfg, codec)
    st = _load_model(cfg, settings, context, ins.run_id, train.input_shape, train.num_classes)
    discarded = _catch_up(r, plan, codec, st, limits.k_min)
    _save_model(st, settings, context, ins.run_id)
    info: dict[str, Any] = {
        **plan.to_dict(),
        "applied_round": st.applied_round,
        "model_sha256": st.digest(),
        "discarded": discarded,
    }
    r.extra = {"distributed": info, "applied_round": st.applied_round}
    r.metrics["epsilon"] = r.state.run_epsilon(ins.run_id)
    if st.applied_round < ins.latest_aggregate:
        why = (
            f"catching up: applied the aggregates up to round {st.applied_round} of"
            f" {ins.latest_aggregate}; the rest come with the next request"
        )
        return _reply(r, settings, context, msg, refusal=why)
    event = plan.event()
    run = r.state.run(ins.run_id)
    after = opacus_epsilon([*run.history, event], r.state.delta, r.state.accountant)
    if after > limits.max_epsilon * (1 + 1e-9):
        why = (
            f"refused: this step would raise epsilon to {after:.3f}, past this run's"
            f" max_epsilon {limits.max_epsilon:g}"
        )
        return _reply(r, settings, context, msg, refusal=why)
    if math.isfinite(limits.max_lifetime_epsilon):
        life = opacus_epsilon([*r.state.history, event], r.state.delta, r.state.accountant)
        if life > limits.max_lifetime_epsilon * (1 + 1e-9):
            why = (
                f"refused: this step would raise the device's lifetime epsilon to {life:.3f},"
                f" past its max_lifetime_epsilon {limits.max_lifetime_epsilon:g}"
            )
            return _reply(r, settings, context, msg, refusal=why)
    model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
    set_flat_params(model, st.params.astype(np.float32))
    t0 = time.perf_counter()
    idx = poisson_batch(len(train), plan.sample_rate, r.rng)
    gsum, _clipped, _loss = clipped_gradient_sum(model, train.x[idx], train.y[idx], plan.clip_norm)
    values, out_of_range = clip_coordinates(gsum / plan.clip_norm, plan.value_range)
    if out_of_range:
        log.warning(
            "client %s: %d gradient coordinates clipped to the public range +-%g (x C);"
            " consider a larger encryption.value_range",
            r.cid,
            out_of_range,
            plan.value_range,
        )
    r.metrics["train-seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    upd = codec.encode(values, 1, plan.share_std_units / codec.quant_scale, r.rng)
    r.metrics["encrypt-seconds"] = time.perf_counter() - t0
    # Charge before anything leaves (_reply persists it): a lost update is still charged.
    r.state = r.state.with_event(event, ins.server_round, ins.run_id)
    r.event = event.as_list()
    r.metrics.update(
        {
            "steps": 1,
            "epsilon": r.state.run_epsilon(ins.run_id),
            "noise-multiplier": event.noise_multiplier,
            "sample-rate": event.sample_rate,
            # Batch size, clipping counts and loss depend on single records without noise:
            # none of them is disclosed (only the noisy encrypted sum leaves the device).
            "update-bytes": len(upd.blob),
        }
    )
    return _reply(r, settings, context, msg, blob=upd.blob)
