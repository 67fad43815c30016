"""``fedpriv sweep run | report``: resumable experiment grids and their results page."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_sweep_parser"]


def _out(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    sweep = Path(args.sweep)
    tail = "" if sweep.stem == "sweep" else f"-{sweep.stem}"
    return Path("runs") / f"sweep-{sweep.parent.name}{tail}"


def cmd_sweep_run(args: argparse.Namespace) -> int:
    from fedpriv.experiments import load_sweep, run_sweep

    runs = load_sweep(Path(args.sweep), args.overrides)
    counts = run_sweep(runs, _out(args), only=args.only)
    print(
        f"sweep: {counts['done']} run, {counts['skipped']} already done, {counts['failed']} failed"
    )
    if args.report:
        cmd_sweep_report(args)
    return 0 if counts["failed"] == 0 else 8


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from fedpriv.experiments import load_sweep, summarize_sweep, write_results

    more = getattr(args, "more", [])
    if more and args.out:
        from fedpriv.errors import ConfigError

        raise ConfigError("--out names one sweep's runs folder: give one sweep file with it")
    rows = []
    # Several sweep files (e.g. one per dataset) make one page; each reads its own runs folder.
    for sweep in [args.sweep, *more]:
        ns = argparse.Namespace(**{**vars(args), "sweep": sweep})
        rows += summarize_sweep(load_sweep(Path(sweep), args.overrides), _out(ns))
    notes = Path(args.notes).read_text(encoding="utf-8") if args.notes else ""
    path = write_results(rows, Path(args.docs), title=args.title, notes=notes)
    print(f"wrote {path}")
    return 0


def add_sweep_parser(sub: Any) -> None:
    sw = sub.add_parser(
        "sweep", help="run an experiment grid (resumable) and write its results page"
    )
    ss = sw.add_subparsers(dest="sweep_command", required=True)
    for name, func, helptext in (
        ("run", cmd_sweep_run, "run every (setting, split, seed) not yet done"),
        ("report", cmd_sweep_report, "write the results table and plots from finished runs"),
    ):
        p = ss.add_parser(name, help=helptext)
        p.add_argument("sweep", type=Path, help="sweep TOML, e.g. simulations/mnist/sweep.toml")
        p.add_argument(
            "--out",
            type=Path,
            default=None,
            help="runs folder (default runs/sweep-<folder>[-<file stem>])",
        )
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
        p.add_argument(
            "--only",
            default="",
            help="run only combinations whose 'setting/split/seedN' contains this",
        )
        p.add_argument(
            "--docs", type=Path, default=Path("docs"), help="where results.md and the plots go"
        )
        p.add_argument("--notes", type=Path, default=None, help="markdown placed above the table")
        p.add_argument("--title", default="Results", help="title of the results page")
        if name == "report":
            p.add_argument(
                "more",
                nargs="*",
                type=Path,
                help="more sweep files on the same page (each reads its default runs folder)",
            )
        p.add_argument(
            "--report", action="store_true", help="(run) also write the results page at the end"
        )
        p.set_defaults(func=func)
