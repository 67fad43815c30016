"""The ServerApp: samples clients, sums their ciphertexts, records the round. No secret key."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedpriv.config import RunConfig, config_hash, config_to_dict
from fedpriv.crypto.codec import PublicParams, load_params_file
from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.errors import ConfigError
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

    @classmethod
    def from_context(cls, context: Context) -> ServerSettings:
        """Read the settings from the Flower run config (``fedpriv-config``, ``keys-dir``,
        ``run-dir``, ``resume``, ``node-wait-s``; see :mod:`fedpriv.runs.flwr_config`)."""
        from fedpriv.runs.flwr_app import server_settings

        return server_settings(context)


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
    min_accepted, gate = 0, None
    if cfg.client_dp:
        from fedpriv.privacy.client_level import client_level_epsilon, client_level_plan

        plan = client_level_plan(cfg)
        p = cfg.privacy
        min_accepted = plan.k_min
        header["client_level"] = {
            "noise_multiplier": plan.noise_multiplier,
            "sample_rate": plan.sample_rate,
            "clip_norm": plan.clip_norm,
            "k_min": plan.k_min,
            "delta": p.client_delta,
            "max_epsilon": p.client_max_epsilon,
        }

        def gate(rnd: int) -> str | None:
            eps = client_level_epsilon(plan, rnd, p.client_delta, p.accountant)
            if eps > p.client_max_epsilon * (1 + 1e-9):
                return (
                    f"round {rnd} would raise the client-level epsilon to {eps:.3f}, "
                    f"past client_max_epsilon {p.client_max_epsilon:g}"
                )
            return None

    recorder = RunRecorder(rd, header=header, progress=s.progress)
    checkpoint = Checkpoint(rd.root / "checkpoint.json")
    strategy = EncryptedFedAvg(
        params,
        json.dumps(config_to_dict(cfg), sort_keys=True),
        num_clients=cfg.federation.num_clients,
        fraction_train=cfg.federation.fraction_train,
        fraction_evaluate=cfg.federation.fraction_evaluate,
        min_train_clients=cfg.federation.min_train_clients,
        round_timeout=cfg.federation.round_timeout_s,
        seed=cfg.seed,
        on_round=None,
        node_wait_timeout=s.node_wait_timeout,
        min_accepted=min_accepted,
        round_gate=gate if cfg.client_dp else None,
        identities=IdentityRegistry.load(s.params_path.parent / "identities.json"),
    )
    first = 1
    if s.resume:
        first = checkpoint.restore(strategy, recorder, rd, params.fingerprint())

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
        if settings is not None:
            run_server(grid, settings)
            return
        from fedpriv.runs.flwr_app import run_flwr_server

        run_flwr_server(grid, context)

    return app
