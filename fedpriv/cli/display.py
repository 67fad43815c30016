"""What ``fedpriv simulate`` prints: a progress bar (or plain lines when piped) and the summary.

Everything fits 80 columns: headers are short and explained in a legend line, numbers have fixed
widths, and the per-client epsilon table shows the rounds that fit (the latest ones) and says
which it left out. Nothing is cut with an ellipsis.
"""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any

from rich import box
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from fedpriv.config import RunConfig
from fedpriv.runs.result import RoundResult, RunResult

__all__ = ["RoundDisplay", "print_summary", "run_header"]


def run_header(cfg: RunConfig, *, what: str = "fedpriv simulate") -> str:
    dp = "off" if cfg.privacy.mode == "off" else f"{cfg.privacy.mode}-level"
    return (
        f"{what} '{cfg.name}': {cfg.federation.num_clients} clients, {cfg.rounds} rounds\n"
        f"  data {cfg.data.dataset} ({cfg.data.partitioner}), DP {dp}, "
        f"encryption {cfg.encryption.scheme}"
    )


def _kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def _eta(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def round_line(r: RoundResult, total: int, cfg: RunConfig) -> str:
    """One round in one line of at most ~70 characters."""
    eps = max(r.epsilon.values()) if r.epsilon and cfg.record_level else None
    up = r.bytes_up / max(1, r.accepted + r.refused + r.failed)
    parts = [
        f"round {r.round}/{total}",
        f"ok {r.accepted}/{r.sampled}",
        *([f"refused {r.refused}"] if r.refused else []),
        *([f"failed {r.failed}"] if r.failed else []),
        "fed-acc " + (f"{r.federated_accuracy:.3f}" if r.federated_accuracy is not None else "-"),
        *([f"eps {eps:.2f}"] if eps is not None else []),
        f"up {_kib(up)} KiB",
        f"{r.seconds:.1f}s",
    ]
    return "  ".join(parts)


class RoundDisplay:
    """Per-round progress: a rich bar with ETA in a terminal, one plain line per round when
    piped. Use as a context manager; call it with each :class:`RoundResult`."""

    def __init__(self, console: Console, cfg: RunConfig, *, quiet: bool = False) -> None:
        self.console = console
        self.cfg = cfg
        self.quiet = quiet
        self._progress: Progress | None = None
        self._task: Any = None
        self._t0 = time.monotonic()
        self._done = 0

    def __enter__(self) -> RoundDisplay:
        if not self.quiet and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]rounds"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("rounds", total=self.cfg.rounds)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, r: RoundResult) -> None:
        if self.quiet:
            return
        line = round_line(r, self.cfg.rounds, self.cfg)
        if self._progress is not None:
            self._progress.console.print(line, highlight=False)
            self._progress.update(self._task, completed=r.round)
            return
        self._done += 1
        left = self.cfg.rounds - r.round
        if left > 0:
            per_round = (time.monotonic() - self._t0) / self._done
            line += f"  eta {_eta(per_round * left)}"
        self.console.print(line, highlight=False, soft_wrap=True)


def _rounds_table(res: RunResult, cfg: RunConfig) -> Table:
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for name in ("round", "acc", "fed acc", "ok/n", "refused", "max eps", "up", "down", "s"):
        t.add_column(name, justify="right", no_wrap=True)
    for r in res.rounds:
        n = max(1, r.accepted + r.refused + r.failed)
        eps = max(r.epsilon.values()) if r.epsilon and cfg.record_level else None
        t.add_row(
            str(r.round),
            f"{r.accuracy:.4f}" if r.accuracy is not None else "-",
            f"{r.federated_accuracy:.4f}" if r.federated_accuracy is not None else "-",
            f"{r.accepted}/{r.sampled}",
            str(r.refused),
            f"{eps:.3f}" if eps is not None else "-",
            _kib(r.bytes_up / n),
            _kib(r.bytes_down / max(1, r.sampled)),
            f"{r.seconds:.1f}",
        )
    return t


def _epsilon_table(res: RunResult, width: int) -> tuple[Table, str]:
    """Clients x rounds; only the latest rounds that fit ``width`` (the note says which)."""
    ids = sorted(
        {cid for r in res.rounds for cid in r.epsilon}
        | {cid for r in res.rounds for cid in _clients(res, r.round)},
        key=lambda s: (len(s), s),
    )
    id_width = max([len("client"), *map(len, ids)])
    fit = max(1, (width - id_width - 2) // 9)
    shown = res.rounds[-fit:]
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    t.add_column("client", no_wrap=True, min_width=id_width)
    for r in shown:
        t.add_column(f"r{r.round}", justify="right", no_wrap=True, min_width=7)
    for cid in ids:
        row = [cid]
        for r in shown:
            c = _clients(res, r.round).get(cid)
            if c is None:
                row.append("")
            elif c.get("epsilon") is not None:
                row.append(f"{c['epsilon']:.3f}" + ("*" if c["status"] == "refused" else ""))
            else:
                row.append(str(c["status"])[:7])
        t.add_row(*row)
    note = ""
    if len(shown) < len(res.rounds):
        note = (
            f"rounds 1-{shown[0].round - 1} not shown at {width} columns; all are in metrics.json"
        )
    return t, note


def _clients(res: RunResult, rnd: int) -> dict[str, Any]:
    for r in res.metrics.get("rounds", []):
        if int(r["round"]) == rnd:
            return dict(r.get("clients", {}))
    return {}


def print_summary(console: Console, res: RunResult) -> None:
    """The per-round table, the per-client epsilon table, and where the outputs are."""
    cfg = res.config
    console.print(
        f"\n[bold]{cfg.name}[/bold]: accuracy per round (acc: held-out set, decrypted by the key "
        "holder)"
    )
    console.print(_rounds_table(res, cfg))
    console.print(
        "fed acc: mean over the clients' local test splits; ok/n: updates accepted/sampled; "
        "up, down: KiB per client; s: seconds",
        style="dim",
    )
    if cfg.record_level and res.rounds:
        p = cfg.privacy
        console.print(
            f"\n[bold]epsilon spent per client[/bold] (delta {p.delta:g}, {p.accountant}, "
            f"budget {p.max_epsilon:g})"
        )
        table, note = _epsilon_table(res, console.width)
        console.print(table)
        console.print(
            "* refused to train: the round would have exceeded the client's budget", style="dim"
        )
        if note:
            console.print(note, style="dim")
    acc = res.final_accuracy
    secs = res.wall_seconds
    console.print(
        ("[bold]done[/bold]" + (f" in {secs:.1f}s" if secs is not None else ""))
        + (f"; final held-out accuracy {acc:.4f}" if acc is not None else "; no round completed")
    )
    if res.stop_reason:
        console.print(f"stopped early: {res.stop_reason}")
    # soft_wrap: a path is never broken over two lines (copy-paste, pipes)
    console.print(f"run folder: {res.run_dir}", soft_wrap=True, highlight=False)
    if res.report_html.exists():
        console.print(f"privacy report: {res.report_html}", soft_wrap=True, highlight=False)
