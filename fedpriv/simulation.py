"""Run a whole experiment on Flower's simulation engine, then evaluate it as the key holder.

The runner plays the data owners' side: it checks everything it can before writing anything
(:func:`fedpriv.runs.prepare.prepare_run`), deals the keys into the run folder, runs the
ServerApp and the virtual ClientApps (in-process through Flower's simulation engine, or
``flwr run`` on a private local SuperLink), and afterwards decrypts each round's global model to
evaluate it on the held-out set (:func:`fedpriv.runs.evaluate_run`) and signs the privacy
report. The server never sees plaintext weights or the held-out data.

Ctrl-C stops a run within seconds (:class:`fedpriv.errors.RunInterrupted`); ``resume=True``
continues it from the last complete round, and clients keep the privacy budget they spent.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import ConfigError, FedprivError, RunFailedError, RunInterrupted
from fedpriv.fileio import atomic_write_text
from fedpriv.runs.folder import RunDir, check_run_dir, default_run_dir, write_config
from fedpriv.runs.prepare import PreparedRun, deal_run_keys, partition_sizes, prepare_run
from fedpriv.runs.rayproc import RAY_WORKER_NICENESS, ray_descendants, shutdown_ray
from fedpriv.runs.result import RoundResult, RunResult, round_result

__all__ = ["ENGINES", "RunResult", "partition_sizes", "project_folder", "simulate"]

log = logging.getLogger("fedpriv.simulation")

ENGINES = ("python", "flwr")
Progress = Callable[[RoundResult], None]


def simulate(
    config: RunConfig | str | Path | None = None,
    out: str | Path | None = None,
    *,
    progress: Progress | None = None,
    engine: str = "python",
    project: str | Path | None = None,
    resume: bool = False,
    client_app: Any = None,
    insecure_test_seed: int | None = None,
    strategy_class: Any = None,
) -> RunResult:
    """Run an experiment in simulation and return its result.

    Parameters
    ----------
    config : RunConfig, path or None
        The experiment: a :class:`~fedpriv.config.RunConfig`, a TOML path, or None for the
        default (``simulations/default.toml``). Ignored with ``resume`` (the run's own is used).
    out : path, optional
        The run folder: absent or empty (default ``runs/<timestamp>-<name>``); with ``resume``,
        the folder of the run to continue.
    progress : callable, optional
        Called with each round's :class:`~fedpriv.runs.RoundResult` as the server records it.
    engine : {"python", "flwr"}
        ``python``: Flower's simulation engine in this process. ``flwr``: the project's
        ``server/`` and ``clients/`` apps through ``flwr run`` on a private local SuperLink.
    project : path, optional
        The project folder for ``engine="flwr"`` (default: this checkout).
    resume : bool
        Continue the interrupted run in ``out`` from its last server checkpoint.
    client_app : ClientApp, optional
        Replaces fedpriv's ClientApp (experiments with faulty clients; python engine only).
    insecure_test_seed : int, optional
        Tests only: the virtual devices draw their DP randomness from this seed instead of the
        OS CSPRNG; every record says so and the report and ``verify`` mark the run not private.
    strategy_class : type, optional
        Replaces the server's strategy (experiments with an adversarial server; python engine).

    Returns
    -------
    RunResult

    Raises
    ------
    ConfigError
        Bad arguments, config, or ``out`` (checked before anything is written).
    RunFailedError
        The federated run did not complete.
    RunInterrupted
        Ctrl-C or SIGTERM; the run folder resumes with ``resume=True``.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine {engine!r}: use {' or '.join(ENGINES)}")
    project_dir = None
    if engine == "flwr":
        project_dir = project_folder(Path(project) if project is not None else None)
        if client_app is not None or strategy_class is not None or insecure_test_seed is not None:
            raise ConfigError(
                "client_app, strategy_class and insecure_test_seed apply to the in-process"
                " engine: use engine='python'"
            )
    elif project is not None:
        raise ConfigError("project is only used with engine='flwr'")
    if resume:
        if out is None:
            raise ConfigError("resume needs the run folder to continue (--out)")
        rd = RunDir(check_run_dir(Path(out), resume=True))
        cfg = load_config(rd.config)
    else:
        cfg = _as_config(config)
        rd = RunDir(check_run_dir(Path(out) if out is not None else default_run_dir(cfg.name)))
    prep = prepare_run(cfg)  # data, partitions, model, value range: all before writing
    cfg = prep.config  # as prepared (e.g. the schema path made absolute)
    t_start = time.perf_counter()
    rd.root.mkdir(parents=True, exist_ok=True)
    if not resume:
        write_config(cfg, rd.root)
    if not rd.keys.exists():
        deal_run_keys(prep, rd)
    # Ray processes that were here before the run (a cluster the caller started) are not ours.
    before = set(ray_descendants())
    try:
        with _shared_accountant_memo():
            _run_engine(
                cfg,
                rd,
                progress,
                engine=engine,
                project_dir=project_dir,
                resume=resume,
                client_app=client_app,
                insecure_test_seed=insecure_test_seed,
                strategy_class=strategy_class,
            )
    except KeyboardInterrupt:
        raise _interrupted(cfg, rd) from None
    finally:
        # The run's own Ray (not a cluster given by address): remember its processes while
        # they are still our descendants; a loaded machine can keep idle actors alive long
        # after shutdown, and a run never leaves them behind.
        own = not cfg.simulation.ray_address
        workers = [p for p in ray_descendants() if p not in before] if own else []
        shutdown_ray()
        if workers:
            from fedpriv.runs.interrupt import reap

            reap(workers, timeout=10.0)
    return _finish(cfg, rd, prep, engine=engine, seconds=time.perf_counter() - t_start)


@contextlib.contextmanager
def _shared_accountant_memo() -> Iterator[None]:
    """Virtual devices on this machine share the accountant's pure results (one PRV evaluation
    per distinct history instead of one per device process); the folder goes with the run."""
    import shutil
    import tempfile

    from fedpriv.privacy.accounting import MEMO_ENV

    memo = tempfile.mkdtemp(prefix="fedpriv-accountant-")
    old = os.environ.get(MEMO_ENV)
    os.environ[MEMO_ENV] = memo
    try:
        yield
    finally:
        shutil.rmtree(memo, ignore_errors=True)
        if old is None:
            os.environ.pop(MEMO_ENV, None)
        else:
            os.environ[MEMO_ENV] = old


def _run_engine(
    cfg: RunConfig,
    rd: RunDir,
    progress: Progress | None,
    *,
    engine: str,
    project_dir: Path | None,
    resume: bool,
    client_app: Any,
    insecure_test_seed: int | None,
    strategy_class: Any,
) -> None:
    if engine == "python":
        _run_python_engine(
            cfg,
            rd,
            progress,
            resume=resume,
            client_app=client_app,
            insecure_test_seed=insecure_test_seed,
            strategy_class=strategy_class,
        )
    else:
        assert project_dir is not None
        _run_flwr_engine(cfg, rd, progress, project_dir, resume=resume)


def _as_config(config: RunConfig | str | Path | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return config
    if config is None or isinstance(config, (str, Path)):
        return load_config(config)
    raise ConfigError(f"config: expected a RunConfig or a TOML path, got {type(config).__name__}")


def _finish(
    cfg: RunConfig, rd: RunDir, prep: PreparedRun, *, engine: str, seconds: float
) -> RunResult:
    """Evaluate as the key holder, record the run's facts, sign the report."""
    from fedpriv.report import write_report
    from fedpriv.runs.evaluate import evaluate_run

    if not rd.metrics.exists():
        raise RunFailedError(
            "simulation finished without writing metrics (the ServerApp did not run)"
        )
    evaluate_run(rd.root, rd.keys, config=cfg, prepared=prep)
    doc = rd.read_metrics()
    doc["partition_sizes"] = prep.sizes
    doc["engine"] = engine
    doc["wall_seconds"] = seconds
    atomic_write_text(rd.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)
    # Every run ships its signed privacy report; failing to build it fails the run.
    write_report(rd.root)
    return RunResult.from_run_dir(rd.root)


def _interrupted(cfg: RunConfig, rd: RunDir) -> RunInterrupted:
    done = _checkpoint_round(rd)
    return RunInterrupted(
        f"run interrupted after {done} of {cfg.rounds} rounds; continue it with "
        f"`fedpriv simulate --resume --out {rd.root}`",
        rd.root,
    )


def project_folder(given: Path | None) -> Path:
    """The folder holding pyproject.toml with the Flower app table (server/ and clients/)."""
    cand = given or Path(__file__).resolve().parents[1]
    if not ((cand / "pyproject.toml").exists() and (cand / "server" / "app.py").exists()):
        raise ConfigError(
            f"--project {cand}: not a fedpriv project folder (pyproject.toml, server/, clients/)"
        )
    return cand.resolve()


def _progress_from_folder(rd: RunDir, progress: Progress | None) -> Callable[[], None]:
    """A poll function that reports each round newly recorded in ``metrics.json``."""
    last = {"round": _checkpoint_round(rd)}  # rounds before a resume are not news

    def poll() -> None:
        if progress is None:
            return
        try:
            rounds = rd.read_metrics().get("rounds", [])
        except (OSError, ValueError):
            return
        for r in rounds:
            if int(r["round"]) > last["round"]:
                progress(round_result(r))
                last["round"] = int(r["round"])

    return poll


def _checkpoint_round(rd: RunDir) -> int:
    """The last fully recorded round (0 before the first checkpoint)."""
    try:
        return int(json.loads(rd.checkpoint.read_text(encoding="utf-8"))["round"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _run_python_engine(
    cfg: RunConfig,
    rd: RunDir,
    progress: Progress | None,
    *,
    resume: bool = False,
    client_app: Any = None,
    insecure_test_seed: int | None = None,
    strategy_class: Any = None,
) -> None:
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from fedpriv.apps import ClientSettings, ServerSettings, make_client_app
    from fedpriv.apps.server import run_server
    from fedpriv.deploy.processes import descendants
    from fedpriv.privacy.policy import DevicePolicy
    from fedpriv.runs.interrupt import graceful_stop, reap
    from fedpriv.runs.stoppable import GridStopped, StoppableGrid

    def on_round(_rec: Any) -> None:
        if progress is not None:
            progress(round_result(rd.read_metrics()["rounds"][-1]))

    settings = ServerSettings(
        cfg,
        rd.root,
        rd.server_params,
        progress=on_round,
        node_wait_timeout=120.0,
        resume=resume,
        **({"strategy_class": strategy_class} if strategy_class is not None else {}),
    )
    stop = threading.Event()
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, _context: Context) -> None:
        # A stopped ServerApp returns normally: Flower's engine then winds down at once
        # (an exception here would cost a 3 s wait inside Flower).
        with contextlib.suppress(GridStopped):
            run_server(StoppableGrid(grid, stop), settings)

    if client_app is None:
        client_app = make_client_app(
            ClientSettings(
                rd.client_keys.resolve(),
                (rd.root / "clients").resolve(),
                # Each virtual device holds its own copy of the experiment: its policy.
                policy=DevicePolicy.from_config(cfg),
                insecure_test_seed=insecure_test_seed,
            )
        )
    ray_procs: list[int] = []

    def remember_ray() -> None:  # while they are still our descendants
        ray_procs.extend(descendants(os.getpid()))

    try:
        with graceful_stop(stop, on_stop=remember_ray):
            run_simulation(
                server_app=server_app,
                client_app=client_app,
                num_supernodes=cfg.federation.num_clients,
                backend_config=_backend_config(cfg),
            )
    except KeyboardInterrupt:
        stop.set()  # the ServerApp thread stops at its next poll
        if not ray_procs:
            remember_ray()
        shutdown_ray()
        reap(ray_procs)
        raise
    except FedprivError:
        raise
    except Exception as exc:
        raise RunFailedError(f"simulation failed: {exc}") from exc
    if stop.is_set():  # a Ctrl-C the engine wound down from by itself
        reap(ray_procs)
        raise KeyboardInterrupt


def _run_flwr_engine(
    cfg: RunConfig, rd: RunDir, progress: Progress | None, project_dir: Path, *, resume: bool
) -> None:
    from fedpriv.runs.flwr_cli import flwr_run_local
    from fedpriv.runs.flwr_config import FlowerRunConfig

    rc = FlowerRunConfig(
        fedpriv_config=str(rd.config.resolve()),
        keys_dir=str(rd.keys.resolve()),
        run_dir=str(rd.root.resolve()),
        resume=resume,
        node_wait_s=120.0,
    )
    flwr_run_local(
        project_dir,
        rc,
        num_supernodes=cfg.federation.num_clients,
        client_cpus=cfg.simulation.num_cpus_per_client,
        on_poll=_progress_from_folder(rd, progress),
    )


def _backend_config(cfg: RunConfig) -> dict[str, Any]:
    # CPU-only clients: Ray's future default (leave the accelerator variables alone), which also
    # silences the FutureWarning it prints on every start
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault(*RAY_WORKER_NICENESS)
    init: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if cfg.simulation.ray_address:
        init = {"address": cfg.simulation.ray_address}
    else:
        init["num_cpus"] = os.cpu_count() or 1
    return {
        "client_resources": {"num_cpus": cfg.simulation.num_cpus_per_client, "num_gpus": 0.0},
        "init_args": init,
    }
