"""The report page's figures, drawn with matplotlib as inline SVG (no files, no network).

:func:`render_figures` is the page's "Figures" part: each client's epsilon after each round
(from ``accounting``) and the bytes each device sent (from ``egress``). Output is deterministic for a given report and matplotlib version (fixed SVG hash salt, no date
metadata), so a verifier can re-render the HTML and compare bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any, cast

from fedpriv.report.markup import eps_text, esc

__all__ = ["egress_svg", "epsilon_svg", "render_figures"]

_RC: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays text: smaller, selectable, prints sharply
    "svg.hashsalt": "fedpriv-report",
    "text.parse_math": False,  # a client id with '$' must not become mathtext
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial"],
    "font.size": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#57606a",
    "axes.labelcolor": "#24292f",
    "xtick.color": "#57606a",
    "ytick.color": "#57606a",
    "axes.titleweight": "bold",
    "axes.titlesize": 11,
    "axes.titlelocation": "left",
}
_PALETTE = (
    "#0969da",
    "#bf3989",
    "#1a7f37",
    "#9a6700",
    "#8250df",
    "#cf222e",
    "#0a7d8c",
    "#6e7781",
    "#bc4c00",
    "#2da44e",
)


# No RDF block: no dates (determinism) and no links in the page.
_NO_METADATA = {"Date": None, "Creator": None, "Format": None, "Type": None}


def color_for(index: int) -> str:
    return _PALETTE[index % len(_PALETTE)]


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context(cast(Any, _RC)):
        fig.savefig(buf, format="svg", metadata=_NO_METADATA, bbox_inches="tight")
    text = buf.getvalue()
    # Inline SVG must not carry an XML prolog or DOCTYPE.
    start = text.find("<svg")
    return text[start:].strip()


def _eps(v: Any) -> float | None:
    if v is None:
        return None
    return math.inf if v == "inf" else float(v)


def epsilon_svg(report: dict[str, Any]) -> str | None:
    """Cumulative epsilon of every client after each round, against the budget (None: no DP)."""
    import matplotlib
    from matplotlib.figure import Figure

    acct = report["accounting"]
    if not acct["dp"]:
        return None
    budget = report["budget_policy"]["max_epsilon"]
    ids = [pc["client_id"] for pc in acct["per_client"]]
    series: dict[str, list[tuple[int, float, str]]] = {cid: [] for cid in ids}
    for r in acct["per_round"]:
        for c in r["clients"]:
            e = _eps(c["epsilon"])
            if e is not None and math.isfinite(e) and c["client_id"] in series:
                series[c["client_id"]].append((int(r["round"]), e, str(c["status"])))
    rounds = [int(r["round"]) for r in acct["per_round"]] or [1]
    with matplotlib.rc_context(cast(Any, _RC)):
        fig = Figure(figsize=(9.6, 4.2))
        ax = fig.add_subplot(1, 1, 1)
        top = max([budget or 0.0] + [e for pts in series.values() for _, e, _ in pts]) * 1.12
        top = max(top, 1.5)
        # Tier bands of "How to DP-fy ML": where each client's guarantee sits at a glance.
        ax.axhspan(0, min(1.0, top), color="#dafbe1", zorder=0, lw=0)
        if top > 1:
            ax.axhspan(1.0, min(10.0, top), color="#fff8c5", zorder=0, lw=0)
        if top > 10:
            ax.axhspan(10.0, top, color="#ffebe9", zorder=0, lw=0)
        for i, cid in enumerate(ids):
            pts = series[cid]
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o", ms=4, lw=1.6, color=color_for(i), label=cid, zorder=3)
            refused = [(x, y) for x, y, st in pts if st == "refused"]
            if refused:
                ax.plot(
                    [x for x, _ in refused],
                    [y for _, y in refused],
                    ls="none",
                    marker="X",
                    ms=9,
                    color=color_for(i),
                    markeredgecolor="#24292f",
                    zorder=4,
                )
        if budget is not None:
            ax.axhline(budget, color="#cf222e", lw=2, ls="--", zorder=2)
            ax.annotate(
                f"budget: max epsilon = {budget:g}",
                xy=(rounds[0], budget),
                xytext=(0, 4),
                textcoords="offset points",
                color="#cf222e",
                fontsize=9,
                fontweight="bold",
            )
        ax.set_xlim(rounds[0] - 0.3, rounds[-1] + 0.3)
        ax.set_ylim(0, top)
        ax.set_xticks(rounds)
        ax.set_xlabel("round")
        ax.set_ylabel("cumulative epsilon (smaller is stronger)")
        ax.set_title("Epsilon spent by each client, after each round")
        ax.grid(axis="y", color="#d0d7de", lw=0.6, zorder=1)
        ax.legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=8.5,
            title="client  (X = refused)",
            title_fontsize=8.5,
        )
        return _svg(fig)


def egress_svg(report: dict[str, Any]) -> str:
    """Bytes each device sent per round: encrypted messages and unencrypted ones, in two panels."""
    import matplotlib
    from matplotlib.figure import Figure

    eg = report["egress"]
    ids = [pc["client_id"] for pc in eg["per_client"]]
    rounds = sorted({int(m["round"]) for m in eg["messages"]}) or [1]
    enc = {(cid, r): 0 for cid in ids for r in rounds}
    plain = dict(enc)
    for m in eg["messages"]:
        key = (m["client_id"], int(m["round"]))
        if key not in enc:
            continue
        if m["encrypted"]:
            enc[key] += int(m["bytes"])
        else:
            plain[key] += int(m["bytes"])
    any_enc = any(enc.values())
    with matplotlib.rc_context(cast(Any, _RC)):
        fig = Figure(figsize=(9.6, 5.4))
        axes = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.25, 1]})
        width = 0.84 / max(len(ids), 1)
        panels = (
            (axes[0], enc, "KiB", 1024.0, "", "Encrypted (model updates)"),
            (axes[1], plain, "bytes", 1.0, "////", "NOT encrypted (metrics, plaintext)"),
        )
        for ax, data, unit, scale, hatch, title in panels:
            for i, cid in enumerate(ids):
                xs = [r - 0.42 + width * (i + 0.5) for r in rounds]
                ys = [data[(cid, r)] / scale for r in rounds]
                ax.bar(
                    xs,
                    ys,
                    width=width * 0.92,
                    color=color_for(i) if not hatch else "white",
                    edgecolor=color_for(i),
                    hatch=hatch,
                    lw=0.8,
                    label=cid,
                    zorder=3,
                )
            if ax is axes[0] and not any_enc:
                ax.set_ylim(0, 1)
                ax.set_yticks([])
                ax.text(
                    0.5,
                    0.5,
                    "nothing was encrypted in this run",
                    transform=ax.transAxes,
                    ha="center",
                    va="center",
                    color="#cf222e",
                    fontweight="bold",
                )
            ax.set_ylabel(unit)
            ax.set_title(title, color="#1a7f37" if not hatch else "#bc4c00")
            ax.grid(axis="y", color="#d0d7de", lw=0.6, zorder=1)
        axes[1].set_xticks(rounds)
        axes[1].set_xticklabels([f"round {r}" for r in rounds])
        axes[0].legend(
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=False,
            fontsize=8.5,
            title="client",
        )
        fig.suptitle(
            "Bytes leaving each device, per round",
            x=0.06,
            ha="left",
            fontweight="bold",
            fontsize=12,
        )
        return _svg(fig)


def render_figures(report: dict[str, Any]) -> str:
    """The page's figures with their captions (a note instead of the epsilon plot without DP)."""
    out = ['<section id="plots"><h2>Figures</h2>']
    svg = epsilon_svg(report)
    cl = report["accounting"].get("client_level")
    if svg is None and cl:
        out.append(
            f'<div class="box warn"><p>Record-level DP was off: there is no per-client \u03b5 to'
            f" plot. The client-level \u03b5, the same for every client, is"
            f" {esc(eps_text(cl['epsilon']))} after {esc(cl['rounds_charged'])} round(s)"
            f" (budget {esc(cl['max_epsilon'])}).</p></div>"
        )
    elif svg is None:
        out.append(
            '<div class="box bad"><p>No epsilon to plot: differential privacy was off in this'
            " run.</p></div>"
        )
    else:
        out.append(
            f'<figure id="fig-epsilon">{svg}<figcaption>Each line is one client\u2019s cumulative'
            " \u03b5 after each round (it only grows: budgets are never reset). The red dashed"
            " line is the budget a client may not pass; a client whose next round would cross it"
            " refuses (X). Background bands: tier 1 (green), tier 2 (yellow), tier 3"
            " (red).</figcaption></figure>"
        )
    out.append(
        f'<figure id="fig-egress">{egress_svg(report)}<figcaption>Every message a device sent,'
        " from the hash-chained egress record. Top: encrypted model updates (the server cannot"
        " read them). Bottom, hatched: unencrypted messages (training metrics), which the server"
        " reads.</figcaption></figure></section>"
    )
    return "".join(out)
