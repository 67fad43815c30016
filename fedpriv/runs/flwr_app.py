"""The server side of a run started by Flower (``flwr run``, or ``fedpriv run`` on a SuperLink).

:func:`server_settings` is the one reader of a ServerApp's settings from its Flower context
(``ServerSettings.from_context`` delegates here); :func:`run_flwr_server` runs the whole
ServerApp: run folder, config, keys, the rounds, and a clear line on success or failure.

``flwr run .`` in the project root with no ``keys-dir`` runs the default experiment out of the
box, as ``fedpriv simulate`` does: the ServerApp deals simulation keys into the run folder
(every virtual ClientApp reads them there), and afterwards decrypts and evaluates the rounds and
writes the privacy report, which records that the ServerApp dealt (and so held) the keys. With
``keys-dir`` given, the server only ever reads public parameters from it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fedpriv.errors import ConfigError, FedprivError
from fedpriv.fileio import atomic_write_text
from fedpriv.runs.flwr_config import FlowerRunConfig
from fedpriv.runs.folder import RunDir, check_run_dir, write_config
from fedpriv.runs.keys import server_params_path

if TYPE_CHECKING:
    from flwr.app import Context
    from flwr.serverapp import Grid

    from fedpriv.apps.server import ServerSettings
    from fedpriv.config import RunConfig
    from fedpriv.runs.prepare import PreparedRun

__all__ = ["SELF_DEALT", "run_flwr_server", "server_settings"]

SELF_DEALT = (
    "the ServerApp of `flwr run` (no keys-dir given: a local simulation, keys dealt into the"
    " run folder, so the server process held the HE secret)"
)


def _say(text: str) -> None:
    # stdout of a ServerApp process is what `flwr log` (and `flwr run --stream`) shows
    print(f"fedpriv: {text}", flush=True)


def server_settings(context: Context) -> ServerSettings:
    """The ServerApp's settings from its Flower run config (see :class:`FlowerRunConfig`)."""
    from fedpriv.apps.server import ServerSettings

    rc = FlowerRunConfig.from_context(context)
    root = rc.run_folder(context.run_id)
    params = server_params_path(Path(rc.keys_dir)) if rc.keys_dir else RunDir(root).server_params
    return ServerSettings(
        _config(rc, RunDir(root)),
        root,
        params,
        node_wait_timeout=rc.node_wait_s,
        resume=rc.resume,
        # deployment: each client id is accepted only from the node registered for it
        node_map=rc.node_ids() or None,
    )


def _config(rc: FlowerRunConfig, rd: RunDir) -> RunConfig:
    """The experiment: a resumed run's own ``config.toml`` unless ``fedpriv-config`` names one."""
    if rc.resume and not rc.fedpriv_config:
        from fedpriv.config import load_config

        return load_config(rd.config)
    return rc.config()


def run_flwr_server(grid: Grid, context: Context, *, deal_keys: bool = True) -> None:
    """Run the ServerApp of a ``flwr run`` (see the module docstring).

    ``deal_keys=False`` (deployments) refuses a run config without ``keys-dir``: a deployed
    server must never create the HE secret.
    """
    from fedpriv.apps.server import run_server

    rc = FlowerRunConfig.from_context(context)
    rd = RunDir(rc.run_folder(context.run_id))
    self_dealt = not rc.keys_dir
    try:
        if self_dealt and not deal_keys:
            raise ConfigError("server: run config 'keys-dir' must name the server bundle")
        cfg = _config(rc, rd)
        prep = None
        if self_dealt:
            if not rc.resume:
                cfg = _fit_federation(cfg, grid)
            prep = _deal_into_run_folder(cfg, rd, resume=rc.resume)
        elif not rd.config.exists():
            rd.root.mkdir(parents=True, exist_ok=True)
            write_config(cfg, rd.root)
        _say(f"run folder {rd.root.resolve()}" + (" (resumed)" if rc.resume else ""))
        t0 = time.perf_counter()
        strategy = run_server(grid, dataclasses.replace(server_settings(context), config=cfg))
        if self_dealt:
            from fedpriv.report import write_report
            from fedpriv.runs.evaluate import evaluate_run

            result = evaluate_run(rd.root, rd.keys, config=cfg, prepared=prep)
            doc = rd.read_metrics()
            doc["engine"] = "flwr run"
            doc["key_dealer"] = SELF_DEALT
            doc["wall_seconds"] = time.perf_counter() - t0
            if prep is not None:
                doc["partition_sizes"] = prep.sizes
            atomic_write_text(rd.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)
            paths = write_report(rd.root)
            acc = result.final_accuracy
            _say(
                f"run complete: {len(result.rounds)} rounds, held-out accuracy "
                + ("-" if acc is None else f"{acc:.4f}")
                + f"; report {paths.html}"
            )
        else:
            _say(f"run complete: {len(strategy.history)} rounds in {rd.root.resolve()}")
    except FedprivError as exc:
        _say(f"run FAILED ({type(exc).__name__}, exit code {exc.exit_code}): {exc}")
        raise
    except Exception as exc:
        _say(f"run FAILED: {type(exc).__name__}: {exc}")
        raise


def _deal_into_run_folder(cfg: RunConfig, rd: RunDir, *, resume: bool) -> PreparedRun:
    """Prepare the run and deal simulation keys into its folder (the ``fedpriv simulate`` way)."""
    from fedpriv.runs.prepare import deal_run_keys, prepare_run

    check_run_dir(rd.root, resume=resume)
    prep = prepare_run(cfg)
    rd.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_config(cfg, rd.root)
    if not rd.keys.exists():
        deal_run_keys(prep, rd)
        _say(f"no keys-dir given: simulation keys dealt into {rd.keys.resolve()}")
    return prep


def _fit_federation(cfg: RunConfig, grid: Grid) -> RunConfig:
    """Size the experiment to the simulated federation (``flwr run .`` with Flower's default of
    2 SuperNodes), and say how to run it at full size."""
    sizes: list[int] = []
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:  # the engine registers its nodes as the app starts
        sizes.append(len(list(grid.get_node_ids())))
        if sizes[-1] and len(sizes) >= 3 and sizes[-1] == sizes[-3]:
            break
        time.sleep(0.25)
    nodes, want = sizes[-1], cfg.federation.num_clients
    if nodes == 0 or nodes == want:
        return cfg
    _say(
        f"the federation has {nodes} SuperNodes, the experiment {want} clients: running it "
        f"with {nodes} (for all {want}: flwr run . --federation-config num-supernodes={want})"
    )
    f = cfg.federation
    return cfg.replace(
        federation={
            "num_clients": nodes,
            "min_train_clients": f.min_train_clients if f.min_train_clients <= nodes else 0,
        }
    )
