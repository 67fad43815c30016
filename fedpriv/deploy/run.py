"""``fedpriv run``: submit a training run to a SuperLink and report its real final status.

``flwr run`` returns 0 as soon as the SuperLink accepted the run, even if the ServerApp fails
later, so this module submits with ``flwr run --format json``, then polls
``flwr list --run-id ID --format json`` until the run is ``finished:*``, and only reports
success for ``finished:completed``. When the server bundle holds sealed keys, a short
``relay-keys`` run goes first (see :mod:`fedpriv.deploy.relay`).

The ServerApp runs on the SuperLink's host and reads the config, the server bundle and the
run folder by path: run ``fedpriv run`` on the server host (or give the paths as they are
there, with ``--remote-bundle``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig
from fedpriv.crypto.codec import load_params_file
from fedpriv.deploy.bundle import check_pin, verify_bundle
from fedpriv.deploy.processes import parse_address
from fedpriv.deploy.project import write_project
from fedpriv.deploy.server import ServerState, control_connection, default_server_state
from fedpriv.errors import ConfigError, RunFailedError
from fedpriv.runs.flwr_cli import COMPLETED, FlwrCli, run_failure, wait_for_run
from fedpriv.runs.flwr_config import FlowerRunConfig
from fedpriv.runs.folder import check_run_dir, default_run_dir, write_config

__all__ = ["RunOutcome", "submit_run"]

log = logging.getLogger("fedpriv.deploy.run")


@dataclass
class RunOutcome:
    """What happened to a submitted run."""

    run_id: int
    status: str
    run_dir: Path
    seconds: float
    relay: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True only for ``finished:completed``."""
        return self.status == COMPLETED


def check_config_fits(cfg: RunConfig, params_path: Path, registered: int | None) -> None:
    """Refuse a config the bundle's keys or the registered nodes cannot serve (before submitting)."""
    params = load_params_file(params_path)
    errors: list[str] = []
    if params.scheme != cfg.encryption.scheme:
        errors.append(
            f"encryption.scheme={cfg.encryption.scheme!r} but the bundle's keys are for "
            f"{params.scheme!r}"
        )
    custody = str(getattr(params, "custody", "shared"))
    if cfg.he_on and custody != cfg.encryption.key_custody:
        errors.append(
            f"encryption.key_custody={cfg.encryption.key_custody!r} but the bundle's keys are "
            f"for {custody!r} custody (set --set encryption.key_custody={custody})"
        )
    per_round = cfg.clients_per_round
    if per_round > params.max_clients:
        errors.append(
            f"federation samples {per_round} clients per round but the keys were sized for at "
            f"most {params.max_clients} (lower fraction_train, or deal keys with --max-clients)"
        )
    if registered is not None and cfg.federation.num_clients > registered:
        errors.append(
            f"federation.num_clients={cfg.federation.num_clients} but the server registered "
            f"{registered} nodes; the run would wait for nodes that cannot join"
        )
    if errors:
        raise ConfigError(errors)


def _stop_reason(run_dir: Path) -> str:
    metrics = run_dir / "metrics.json"
    if metrics.exists():
        with contextlib.suppress(ValueError, OSError):
            return str(json.loads(metrics.read_text(encoding="utf-8")).get("stop_reason", ""))
    return ""


def submit_run(
    superlink: str | None,
    bundle_dir: Path,
    cfg: RunConfig,
    *,
    run_dir: Path | None = None,
    server_state: Path | None = None,
    dealer_fingerprint: str | None = None,
    remote_bundle: str | None = None,
    relay: bool = True,
    node_wait_s: float = 600.0,
    timeout_s: float = 6 * 3600.0,
    poll_s: float = 3.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    on_submitted: Callable[[str, int], None] | None = None,
    resume: bool = False,
) -> RunOutcome:
    """Submit ``cfg`` as a run (after the key relay, when needed) and wait for its final status.

    Parameters
    ----------
    superlink : str or None
        ``HOST:PORT`` of the SuperLink's Control API (None: the one ``fedpriv server start``
        recorded in its state folder; its public address means the same).
    bundle_dir : Path
        The server bundle (verified here; its CA authenticates the SuperLink).
    cfg : RunConfig
        The experiment; written to ``<run-dir>/config.toml`` for the ServerApp.
    run_dir : Path, optional
        Where the ServerApp writes (default ``runs/<timestamp>-<name>``).
    server_state : Path, optional
        ``fedpriv server start``'s state folder (for the registered node ids).
    remote_bundle : str, optional
        The server bundle's path on the SuperLink host, if it differs from ``bundle_dir``.
    relay : bool
        Relay sealed keys first when the bundle holds any.
    progress : callable, optional
        Called with each new round's metrics entry (when the run folder is local).
    on_submitted : callable, optional
        Called with (task, run id) right after each submission.
    resume : bool
        Continue the interrupted run in ``run_dir`` from its last checkpoint (``cfg`` must be
        the run's own ``config.toml``).

    Returns
    -------
    RunOutcome

    Raises
    ------
    RunFailedError
        The relay or the training run did not finish as ``finished:completed``.
    """
    bundle = verify_bundle(bundle_dir, kind="server")
    state = ServerState(
        (Path(server_state) if server_state else default_server_state(bundle))
        .expanduser()
        .resolve()
    )
    if state.root.exists():
        check_pin(bundle, state.root, dealer_fingerprint)
    nodes = state.read_nodes()
    if not nodes:
        log.warning(
            "no registered node ids in %s: every node the SuperLink knows may be sampled",
            state.root,
        )
    check_config_fits(cfg, bundle.path("params.json"), len(nodes) if nodes else None)
    superlink, token = control_connection(state, superlink)
    parse_address(superlink)
    if resume and run_dir is None:
        raise ConfigError("resume needs the run folder (--out) of the run to continue")
    root = check_run_dir(Path(run_dir or default_run_dir(cfg.name)), resume=resume).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "config.toml" if resume else write_config(cfg, root)
    common = FlowerRunConfig(
        keys_dir=remote_bundle or str(bundle.root),
        run_dir=str(root),
        allowed_nodes=",".join(str(n) for n in sorted(nodes.values())),
        node_map=",".join(f"{c}={n}" for c, n in sorted(nodes.items())),
        node_wait_s=float(node_wait_s),
    )
    relay_status: dict[str, Any] | None = None
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedpriv-run-") as tmp:
        tmpd = Path(tmp)
        project = write_project(tmpd / "app")
        cli = FlwrCli(tmpd / "flwr-home", superlink, bundle.path("ca.crt"), token=token)
        if relay and any(r.startswith("relay/") for r in bundle.meta["files"]):
            rc = dataclasses.replace(common, task="relay-keys")
            rid = cli.submit(project, rc.write(tmpd / "relay.toml"))
            if on_submitted:
                on_submitted("relay-keys", rid)
            status = wait_for_run(cli, rid, timeout=timeout_s, poll=poll_s)
            if status != COMPLETED:
                raise run_failure(cli, rid, status, "key relay", _stop_reason(root))
            from fedpriv.deploy.relay import relay_summary

            relay_status = {e["client_id"]: e["status"] for e in relay_summary(root)}
        rc = dataclasses.replace(common, fedpriv_config=str(cfg_path), resume=resume)
        run_id = cli.submit(project, rc.write(tmpd / "train.toml"))
        if on_submitted:
            on_submitted("train", run_id)
        seen = {"rounds": 0}

        def _poll() -> None:
            if progress is None:
                return
            try:
                doc = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return
            rounds = doc.get("rounds", [])
            for r in rounds[seen["rounds"] :]:
                progress(r)
            seen["rounds"] = len(rounds)

        status = wait_for_run(cli, run_id, timeout=timeout_s, poll=poll_s, on_poll=_poll)
        _poll()
        if status != COMPLETED:
            raise run_failure(cli, run_id, status, "training", _stop_reason(root))
    metrics: dict[str, Any] = {}
    try:
        metrics = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RunFailedError(
            f"run {run_id} completed but {root}/metrics.json is unreadable ({exc}); was the "
            "run folder on another host? (`fedpriv run` must run on the SuperLink host)"
        ) from None
    return RunOutcome(run_id, status, root, time.perf_counter() - t0, relay_status, metrics)
