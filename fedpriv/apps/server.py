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

from fedpriv.config import RunConfig, config_hash
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
        """Read the settings from the Flower run config (``fedpriv-config``, ``keys-dir``,
        ``run-dir``, ``resume``, ``node-wait-s``; see :mod:`fedpriv.runs.flwr_config`)."""
        from fedpriv.runs.flwr_app import server_settings

        return server_settings(context)


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


def _threshold_public(params: PublicParams, cfg: RunConfig, folder: Path) -> Any:
    """Threshold custody's public material next to the parameters (None: shared custody)."""
    from fedpriv.crypto.tparams import ThresholdParams

    threshold = isinstance(params, ThresholdParams)
    if threshold != (cfg.encryption.key_custody == "threshold" and cfg.he_on):
        raise ConfigError(
            f"server: the key set is for {'threshold' if threshold else 'shared'} custody but "
            f"the config asks for encryption.key_custody={cfg.encryption.key_custody!r}"
        )
    if not isinstance(params, ThresholdParams):
        return None
    from fedpriv.crypto.tcustody import ThresholdPublic

    return ThresholdPublic.load(folder, params)


def _threshold_header(pub: Any, cfg: RunConfig) -> dict[str, Any]:
    """The public facts of a threshold key the report states (docs/crypto.md)."""
    p = pub.params
    b = p.noise_budget()
    return {
        "parties": p.parties,
        "threshold": p.threshold,
        "share_holders": sorted(pub.parties),
        "key_id": pub.key_id.hex(),
        "poly_modulus_degree": p.poly_modulus_degree,
        "log2_q": b.q_log2,
        "modulus_bits": b.security_bits_used,
        "max_modulus_bits_128": b.security_bits_allowed,
        "flood_bits": p.flood_bits,
        "statistical_security": p.statistical_security,
        "statistical_distance_log2": b.statistical_distance_log2,
        "failure_log2": b.failure_log2,
        "max_decryptions": p.max_decryptions,
        "compress_bits": p.compress_bits,
        "masked": True,
        "decryption_check": cfg.encryption.decryption_check,
    }


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
    threshold = _threshold_public(params, cfg, s.params_path.parent)
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
    header["key_custody"] = "threshold" if threshold is not None else "shared"
    if threshold is not None:
        header["threshold"] = _threshold_header(threshold, cfg)
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
        **({"threshold": threshold} if threshold is not None else {}),
    )
    if threshold is not None:
        from fedpriv.deploy.threshold import registry_proof

        strategy.registry_proof = registry_proof(s.params_path.parent)
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
    try:
        strategy.run(grid, cfg.rounds, first_round=first)
    finally:
        # A failed run says why in metrics.json too, not only in the exception.
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
        if settings is not None:
            run_server(grid, settings)
            return
        from fedpriv.runs.flwr_app import run_flwr_server

        run_flwr_server(grid, context)

    return app
