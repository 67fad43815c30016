"""The ServerApp: samples clients, sums their ciphertexts, records the round. No secret key."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.config import RunConfig, config_hash, load_config
from fedpriv.crypto.codec import PublicParams, load_params_file
from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.errors import ConfigError
from fedpriv.protocol import request_json
from fedpriv.runs.checkpoint import Checkpoint
from fedpriv.runs.folder import RunDir
from fedpriv.runs.recorder import RunRecorder
from fedpriv.strategy.core import EncryptedFedAvg, RoundRecord

__all__ = ["ServerSettings", "make_server_app", "run_server"]

log = logging.getLogger("fedpriv.server")


@dataclass(frozen=True)
class ServerSettings:
    config: RunConfig
    run_dir: Path
    params_path: Path
    progress: Callable[[RoundRecord], None] | None = None
    node_wait_timeout: float = 600.0
    resume: bool = False
    """Continue from the run folder's last checkpoint instead of starting at round 1."""
    node_map: dict[str, int] | None = None
    """Client id -> node id, as registered (deployment): updates are accepted only from there."""
    sampling_seed: int | None = None
    """Reproducible client sampling (tests); default: seeded from the OS CSPRNG."""
    strategy_class: type[EncryptedFedAvg] = EncryptedFedAvg
    """The strategy to run: a subclass plays an adversarial server in experiments and tests."""

    @classmethod
    def from_context(cls, context: Context) -> ServerSettings:
        rc = context.run_config
        cfg_path = str(rc.get("fedpriv-config", "") or "")
        cfg = load_config(cfg_path or None)
        keys = str(rc.get("keys-dir", "") or "")
        if not keys:
            raise ConfigError(
                "server: run config 'keys-dir' is required (the folder `fedpriv keys init` wrote)"
            )
        run_dir = str(rc.get("run-dir", "") or "")
        root = (
            Path(run_dir)
            if run_dir
            else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
        )
        return cls(cfg, root, Path(keys) / "server" / "params.json")


def _eval_cap(params: PublicParams, cfg: RunConfig) -> int:
    """Public bound on a client's evaluation count: its test split can be at most this large.

    The weight cap (``encryption.max_examples_per_client``, or the encryption parameters' weight
    cap when updates are weighted by example counts) bounds a client's training examples; its test
    split is ``f / (1 - f)`` of that (``f = data.test_fraction``).
    """
    cap = cfg.encryption.max_examples_per_client
    if cap <= 0 and not cfg.client_dp:
        cap = int(getattr(params, "max_weight", 0) or 0)
    if cap <= 0:
        return 2**31 - 1
    f = cfg.data.test_fraction
    return max(1, math.ceil(cap * max(1.0, f / (1.0 - f))))


def run_server(grid: Grid, s: ServerSettings) -> EncryptedFedAvg:
    """Drive the whole run; returns the strategy (its history and final global blob)."""
    cfg = s.config
    params: PublicParams = load_params_file(s.params_path)
    if params.scheme != cfg.encryption.scheme:
        raise ConfigError(
            f"server: key set is for scheme {params.scheme!r} but the config asks for {cfg.encryption.scheme!r}"
        )
    rd = RunDir(s.run_dir)
    rd.root.mkdir(parents=True, exist_ok=True)
    registry = IdentityRegistry.load(s.params_path.parent / "identities.json")
    header = {
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "encryption": cfg.encryption.scheme,
        "privacy_mode": cfg.privacy.mode,
        "delta": cfg.privacy.delta,
        "accountant": cfg.privacy.accountant,
        "max_epsilon": cfg.privacy.max_epsilon,
        "params_fingerprint": params.fingerprint(),
        "num_values": params.num_values,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    from fedpriv.privacy.policy import request_k_min

    # Never publish an aggregate of fewer updates than the devices require (they would refuse it).
    min_accepted = request_k_min(cfg)
    gate: Callable[[int], str | None] | None = None
    header["k_min"] = min_accepted
    header["identity_registry_sha256"] = registry.fingerprint()
    if cfg.client_dp:
        from fedpriv.privacy.client_level import client_level_epsilon, client_level_plan

        plan = client_level_plan(cfg)
        p = cfg.privacy
        min_accepted = max(min_accepted, plan.k_min)
        header["client_level"] = {
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "num_clients": plan.num_clients,
            "per_round": plan.per_round,
            "clip_norm": plan.clip_norm,
            "k_min": plan.k_min,
            "delta": p.client_delta,
            "max_epsilon": p.client_max_epsilon,
            "adjacency": "replace-one-client",
            "sampling": "fixed-size, without replacement",
            "accountant": "dp-accounting RDP",
        }

        def client_gate(rnd: int) -> str | None:
            eps = client_level_epsilon(plan, rnd, p.client_delta)
            if eps > p.client_max_epsilon * (1 + 1e-9):
                return (
                    f"round {rnd} would raise the client-level epsilon to {eps:.3f}, "
                    f"past client_max_epsilon {p.client_max_epsilon:g}"
                )
            return None

        gate = client_gate

    extra: dict[str, Any] = {}
    if cfg.distributed_dp:  # fedpriv/privacy/distributed.py
        from fedpriv.privacy.distributed import server_setup

        gate, dist_header, cls, extra = server_setup(cfg, params, rd, s.strategy_class)
        header["distributed"] = dist_header
        min_accepted = max(min_accepted, int(dist_header["k_min"]))
    else:
        cls = s.strategy_class
    recorder = RunRecorder(rd, header=header, progress=s.progress)
    checkpoint = Checkpoint(rd.root / "checkpoint.json")
    strategy = cls(
        params,
        request_json(cfg),
        num_clients=cfg.federation.num_clients,
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=cfg.federation.fraction_evaluate,
        min_train_clients=cfg.federation.min_train_clients,
        round_timeout=cfg.federation.round_timeout_s,
        seed=s.sampling_seed,
        on_round=None,
        node_wait_timeout=s.node_wait_timeout,
        min_accepted=min_accepted,
        round_gate=gate,
        identities=registry,
        pinned_nodes=s.node_map,
        max_eval_examples=_eval_cap(params, cfg),
        **extra,
    )
    first = 1
    if s.resume:
        first = checkpoint.restore(strategy, recorder, rd, params.fingerprint())
        if cfg.distributed_dp:
            strategy.restore_aggregates(r for r in range(1, first) if rd.global_blob(r).exists())

    def on_round(rec: RoundRecord, blob: bytes | None) -> None:
        # Record first, checkpoint last: a checkpoint only ever names a fully recorded round.
        recorder(rec, blob)
        if blob is not None:
            checkpoint.save(strategy, rec.server_round, params.fingerprint())

    strategy.on_round = on_round
    strategy.run(grid, cfg.rounds, first_round=first)
    recorder.flush(
        {
            "stop_reason": strategy.stop_reason,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    )
    return strategy


def make_server_app(settings: ServerSettings | None = None) -> ServerApp:
    """Build the ServerApp. ``settings=None`` reads them from the run config (``flwr run``)."""
    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        run_server(grid, settings if settings is not None else ServerSettings.from_context(context))

    return app
