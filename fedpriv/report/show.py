"""``fedpriv report show``: the report's summary in the terminal (rich), read from the JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from fedpriv.report.tiers import epsilon_tier

__all__ = ["print_summary"]

_TIER_STYLE = {1: "green", 2: "yellow", 3: "red", None: "red"}


def _eps(v: Any) -> str:
    if v is None:
        return "-"
    return "inf" if v == "inf" else f"{float(v):.3f}"


def _kib(n: Any) -> str:
    return f"{int(n or 0) / 1024:.1f}"


def _ranges(rounds: list[int]) -> str:
    """``[1, 2, 3, 5]`` -> ``"1-3,5"`` (a run of rounds stays short)."""
    out: list[str] = []
    for r in sorted(rounds):
        if out and "-" not in out[-1].split(",")[-1] and int(out[-1]) == r - 1:
            out[-1] = f"{r - 1}-{r}"
        elif out and "-" in out[-1] and int(out[-1].split("-")[1]) == r - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{r}"
        else:
            out.append(str(r))
    return ",".join(out) or "-"


def print_summary(doc: dict[str, Any], run_dir: Path, console: Console | None = None) -> None:
    """Print the plain-language summary, the per-client table and how to verify.

    Everything printed comes from the report file; ``show`` does not verify it (say so).
    """
    con = console or Console()
    s, i, acct = doc["summary"], doc["identification"], doc["accounting"]
    style = _TIER_STYLE.get(s["tier"], "red")
    lines = [f"[bold {style}]{escape(s['headline'])}[/]", "", escape(s["encryption"])]
    if s["dp"]:
        lines += [escape(s["weakest"]), escape(s["strongest"])]
        lines.append(
            f"Budget: epsilon <= {s['max_epsilon']:g} per client, delta = {s['delta']:g};"
            f" {s['refusals']} refusal(s)."
        )
    acc = s["final_accuracy"]
    base = doc["utility"]["baseline"]
    lines.append(
        "Final held-out accuracy: "
        + (f"{100 * acc:.1f}%" if acc is not None else "n/a")
        + (
            f" (non-private baseline {100 * base['final_accuracy']:.1f}%)"
            if base and base.get("final_accuracy") is not None
            else " (no non-private baseline was run)"
        )
    )
    lines.append(
        f"Sent by devices: {s['messages']} messages, {_kib(s['bytes_encrypted'])} KiB encrypted,"
        f" {_kib(s['bytes_not_encrypted'])} KiB not encrypted."
    )
    for w in s["warnings"]:
        lines.append(f"[bold red]WARNING: {escape(w)}[/]")
    con.print(
        Panel(
            "\n".join(lines),
            title=f"privacy report: {escape(i['run_name'])} ({escape(i['run_id'])})",
            subtitle=escape(s["tier_source"]),
            expand=False,
        )
    )
    # Short headers explained in a legend, rounds as ranges: fits 80 columns, never truncated.
    t = Table(
        title="per client (epsilon is cumulative over all rounds)",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for col, just in (
        ("client", "left"),
        ("records", "right"),
        ("trained", "left"),
        ("refused", "left"),
        ("eps", "right"),
        ("PLD", "right"),
        ("tier", "center"),
        ("enc KiB", "right"),
        ("clear", "right"),
    ):
        t.add_column(col, justify=just, no_wrap=True)  # type: ignore[arg-type]
    sites = {x["client_id"]: x for x in doc["data_locations"]["sites"]}
    mech = {x["client_id"]: x for x in doc["mechanism"]["per_client"]}
    eg = {x["client_id"]: x for x in doc["egress"]["per_client"]}
    for pc in acct["per_client"]:
        cid = pc["client_id"]
        tier, _ = epsilon_tier(pc["epsilon"])
        t.add_row(
            escape(cid),
            str(sites.get(cid, {}).get("records", "-")),
            _ranges(pc["rounds_trained"]),
            _ranges(mech.get(cid, {}).get("rounds_refused", [])),
            _eps(pc["epsilon"]),
            _eps(pc["epsilon_pld"]),
            f"[{_TIER_STYLE.get(tier, 'red')}]{tier if tier else '-'}[/]",
            _kib(eg.get(cid, {}).get("bytes_encrypted")),
            _kib(eg.get(cid, {}).get("bytes_not_encrypted")),
        )
    con.print(t)
    con.print(
        "trained, refused: rounds; eps: the reporting accountant, PLD: an independent"
        " accountant's check; enc, clear: KiB sent encrypted and in the clear",
        style="dim",
    )
    so = doc["sign_off"]
    con.print(
        f"Signed with Ed25519 key [bold]{escape(so['fingerprint'])}[/] at {escape(so['signed_at'])}."
        " This summary is read from the file and NOT verified; check it with:",
        highlight=False,
    )
    # soft_wrap: a command or path is never broken over two lines
    con.print(
        f"  fedpriv report verify {escape(str(run_dir))} --trusted-key {escape(so['fingerprint'])}",
        highlight=False,
        soft_wrap=True,
    )
    con.print(
        f"Full report: {escape(str(run_dir / 'privacy_report.html'))}",
        highlight=False,
        soft_wrap=True,
    )
