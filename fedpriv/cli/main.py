"""``fedpriv`` command line.

Exit codes: 0 success; 1 unexpected error; 2 invalid config or arguments; 3 data error;
4 key/crypto error; 5 invalid message; 6 privacy budget exhausted; 7 corrupt state;
8 run failed; 9 verification failed (see :mod:`fedpriv.errors`); 130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from fedpriv.cli._args import add_config_args
from fedpriv.errors import FedprivError

__all__ = ["main"]


def cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedpriv.cli.display import RoundDisplay, print_summary, run_header
    from fedpriv.config import load_config
    from fedpriv.errors import ConfigError
    from fedpriv.runs import check_run_dir
    from fedpriv.simulation import simulate

    if args.project is not None and args.engine != "flwr":
        raise ConfigError("--project is only used with --engine flwr")
    if args.resume:
        if args.config is not None or args.overrides:
            raise ConfigError("--resume continues a run with its own config: drop --config/--set")
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the folder of the interrupted run)")
        cfg = load_config(check_run_dir(args.out, resume=True) / "config.toml")
    else:
        cfg = load_config(args.config, args.overrides)
        if args.out is not None:
            check_run_dir(args.out)  # argument mistakes before the header (simulate checks again)
    if args.engine == "flwr":
        from fedpriv.simulation import project_folder

        project_folder(args.project)
    console = Console(highlight=False)
    console.print(run_header(cfg) + (" (resumed)" if args.resume else ""))
    if args.insecure_test_seed is not None:
        console.print(
            "[bold red]warning:[/] --insecure-test-seed makes the devices' DP randomness "
            "reproducible: this run is NOT private (its report and `report verify` say so)"
        )
    out = args.out
    if args.monitor and out is None:  # the monitor needs the folder before the run makes it
        from fedpriv.runs import default_run_dir

        out = default_run_dir(cfg.name)
    from fedpriv.cli.monitor_cmd import monitor_alongside

    with (
        monitor_alongside(args.monitor, out or Path("runs"), args.monitor_port),
        RoundDisplay(console, cfg, quiet=args.quiet) as show,
    ):
        result = simulate(
            cfg,
            out,
            progress=show,
            engine=args.engine,
            project=args.project,
            resume=args.resume,
            insecure_test_seed=args.insecure_test_seed,
        )
    print_summary(console, result)
    return 0


def cmd_central(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from fedpriv.config import load_config
    from fedpriv.experiments.central import run_central

    cfg = load_config(args.config, args.overrides)
    res = run_central(
        cfg,
        validation_fraction=args.validation,
        out=args.out,
        log=None if args.quiet else print,
    )
    doc = asdict(res)
    doc.pop("curve")
    print(json.dumps(doc, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fedpriv",
        description="Private federated learning: Flower + Opacus DP-SGD + homomorphic encryption.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show Flower/Ray logs")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser(
        "simulate", help="run a federated simulation (default: 10 clients on digits, DP + BFV on)"
    )
    add_config_args(s)
    s.add_argument(
        "--out", type=Path, default=None, help="run folder (default runs/<timestamp>-<name>)"
    )
    s.add_argument("--quiet", action="store_true", help="no per-round progress")
    s.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last server checkpoint (config and keys come from that folder)",
    )
    s.add_argument(
        "--engine",
        choices=["python", "flwr"],
        default="python",
        help="python: Flower's simulation engine in-process; flwr: submit server/ and clients/ with `flwr run` to a private local SuperLink",
    )
    s.add_argument(
        "--project",
        type=Path,
        default=None,
        help="project folder for --engine flwr (default: this checkout)",
    )
    s.add_argument(
        "--insecure-test-seed",
        type=int,
        default=None,
        metavar="N",
        help="tests only: the virtual devices draw their DP randomness from this seed instead of "
        "the OS CSPRNG; the run is marked NOT private",
    )
    from fedpriv.cli.monitor_cmd import add_monitor_args, add_monitor_parser

    add_monitor_args(s)
    s.set_defaults(func=cmd_simulate)
    c = sub.add_parser(
        "central",
        help="central DP-SGD on the union of the clients' data (the ceiling of distributed DP)",
    )
    add_config_args(c)
    c.add_argument("--out", type=Path, default=None, help="folder for metrics.json (optional)")
    c.add_argument(
        "--validation",
        type=float,
        default=0.0,
        metavar="F",
        help="hold out this share of the training data and evaluate on it (tuning), not on the"
        " test set",
    )
    c.add_argument("--quiet", action="store_true", help="no per-evaluation progress")
    c.set_defaults(func=cmd_central)
    from fedpriv.cli.data_cmd import add_data_parser

    add_data_parser(sub)
    add_monitor_parser(sub)
    from fedpriv.cli.sweep_cmd import add_sweep_parser

    add_sweep_parser(sub)
    from fedpriv.cli.deploy_cmd import add_deploy_commands

    add_deploy_commands(sub)
    from fedpriv.cli.report_cmd import add_report_parser

    add_report_parser(sub)
    return p


def _quiet_third_party(verbose: bool) -> None:
    """Our own warnings and errors only, unless ``--verbose``: Flower's INFO/DEBUG lines and
    deprecation banners, Ray's log lines and FutureWarnings stay out of a researcher's way."""
    import warnings

    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)  # records that propagate from chatty loggers stop here too
    if verbose:
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning,ignore::DeprecationWarning")
    for name in ("flwr", "ray"):
        # Flower sets its logger to DEBUG when imported: a filter survives that.
        logging.getLogger(name).addFilter(_ErrorsOnly())
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


def _interrupted(code: int, *, program: bool) -> int:
    """Exit an interrupted program at once. Everything it wrote is on disk (atomic, fsynced);
    what is left are third-party threads and native teardown (Ray's, torch's), which can wait
    on services that are gone or take seconds: not worth keeping a stopped user waiting.
    In-process callers (``main([...])``) get the exit code instead."""
    if program:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def main(argv: list[str] | None = None) -> int:
    """The ``fedpriv`` program (``argv`` None: ``sys.argv``); returns the exit code."""
    from fedpriv.errors import RunInterrupted
    from fedpriv.runs.interrupt import EXIT_INTERRUPTED, sigint_guard

    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_third_party(args.verbose)
    with sigint_guard():
        try:
            return int(args.func(args))
        except RunInterrupted as exc:
            print(f"interrupted: {exc}", file=sys.stderr)
            return _interrupted(exc.exit_code, program=argv is None)
        except FedprivError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.exit_code
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return _interrupted(EXIT_INTERRUPTED, program=argv is None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
