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
from typing import Any

from fedpriv.cli._args import add_config_args
from fedpriv.errors import FedprivError

__all__ = ["main"]


def _progress_printer(console: Any, cfg: Any) -> Any:
    def show(rec: Any) -> None:
        eps = [c.metrics.get("epsilon", 0.0) for c in rec.clients if c.metrics]
        up = [c.bytes_up for c in rec.clients if c.bytes_up]
        acc = f"{rec.federated_accuracy:.3f}" if rec.federated_accuracy is not None else "  -  "
        refused = sum(c.status == "refused" for c in rec.clients)
        bad = sum(c.status in ("rejected", "failed") for c in rec.clients)
        console.print(
            f"round {rec.server_round}/{cfg.rounds}  accepted {rec.accepted}/{len(rec.sampled)}"
            + (f"  refused {refused}" if refused else "")
            + (f"  rejected/failed {bad}" if bad else "")
            + f"  fed-acc {acc}"
            + (f"  eps max {max(eps):.2f}" if eps and cfg.record_level else "")
            + (f"  up {sum(up) / len(up) / 1024:.1f} KiB/client" if up else "")
            + f"  {rec.seconds:.1f}s"
        )

    return show


def _summary(console: Any, result: Any, cfg: Any) -> None:
    from rich.table import Table

    doc = result.metrics
    t = Table(
        title=f"fedpriv run '{cfg.name}': accuracy per round (held-out set, decrypted by the key holder)"
    )
    for col in (
        "round",
        "held-out acc",
        "federated acc",
        "accepted",
        "refused",
        "max eps",
        "KiB up/client",
        "KiB down/client",
        "s",
    ):
        t.add_column(col, justify="right")
    for r in doc["rounds"]:
        cl = list(r["clients"].values())
        eps = [c["epsilon"] for c in cl if c.get("epsilon") is not None]
        ups = [c["bytes_up"] for c in cl if c["bytes_up"]]
        downs = [c["bytes_down"] for c in cl]
        t.add_row(
            str(r["round"]),
            f"{r['heldout_accuracy']:.4f}" if r.get("heldout_accuracy") is not None else "-",
            f"{r['federated_accuracy']:.4f}" if r.get("federated_accuracy") is not None else "-",
            f"{r['accepted']}/{r['sampled']}",
            str(r["refused"]),
            f"{max(eps):.3f}" if eps and cfg.record_level else "-",
            f"{sum(ups) / len(ups) / 1024:.1f}" if ups else "-",
            f"{sum(downs) / len(downs) / 1024:.1f}" if downs else "-",
            f"{r['seconds']:.1f}",
        )
    console.print(t)
    if cfg.record_level:
        et = Table(
            title=f"epsilon spent per client (delta={cfg.privacy.delta:g}, accountant={cfg.privacy.accountant}, budget {cfg.privacy.max_epsilon:g})"
        )
        et.add_column("client")
        rounds = doc["rounds"]
        for r in rounds:
            et.add_column(f"r{r['round']}", justify="right")
        ids = sorted({cid for r in rounds for cid in r["clients"]}, key=lambda s: (len(s), s))
        for cid in ids:
            row = [cid]
            for r in rounds:
                c = r["clients"].get(cid)
                if c is None:
                    row.append("")
                else:
                    e = c.get("epsilon")
                    mark = "*" if c["status"] == "refused" else ""
                    row.append(f"{e:.3f}{mark}" if e is not None else c["status"])
            et.add_row(*row)
        console.print(et)
        console.print("  * = refused to train: the round would have exceeded the client's budget")
    acc = result.final_accuracy
    console.print(
        f"[bold]done[/bold] in {result.wall_seconds:.1f}s; final held-out accuracy {acc:.4f}"
        if acc is not None
        else "no round completed",
    )
    if doc.get("stop_reason"):
        console.print(f"stopped early: {doc['stop_reason']}")
    console.print(f"outputs: {result.run_dir}")


def cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedpriv.config import load_config
    from fedpriv.simulation import simulate

    console = Console()
    if args.resume:
        if args.out is None or args.config is not None or args.overrides:
            from fedpriv.errors import ConfigError

            raise ConfigError(
                "--resume takes the run folder as --out and uses its own config (no --config/--set)"
            )
        cfg = load_config(args.out / "config.toml")
    else:
        cfg = load_config(args.config, args.overrides)
    console.print(
        f"fedpriv simulate '{cfg.name}': {cfg.federation.num_clients} clients, {cfg.rounds} rounds, "
        f"data={cfg.data.dataset} ({cfg.data.partitioner}), DP={cfg.privacy.mode}, encryption={cfg.encryption.scheme}"
    )
    if args.insecure_test_seed is not None:
        console.print(
            "[bold red]warning:[/] --insecure-test-seed makes the devices' DP randomness "
            "reproducible: this run is NOT private (its report and `report verify` say so)"
        )
    result = simulate(
        cfg,
        args.out,
        progress=None if args.quiet else _progress_printer(console, cfg),
        insecure_test_seed=args.insecure_test_seed,
    )
    _summary(console, result, cfg)
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
    from fedpriv.cli.sweep_cmd import add_sweep_parser

    add_sweep_parser(sub)
    from fedpriv.cli.deploy_cmd import add_deploy_commands

    add_deploy_commands(sub)
    from fedpriv.cli.report_cmd import add_report_parser

    add_report_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return int(args.func(args))
    except FedprivError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
