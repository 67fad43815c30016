"""Render the signed report as one self-contained HTML page a non-engineer can read and print.

Order: a plain-language summary (strongest and weakest guarantee, epsilon tiers), then the two
figures, then one detailed part per report section. Every piece of text from the report is
escaped; the page carries a Content-Security-Policy that forbids every fetch, and its figures are
inline SVG. Each number in the summary is tagged ``data-field="<json path>"`` and
``data-value="<json value>"`` so tests and ``fedpriv report verify`` can match it to the JSON.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

from fedpriv.report.canonical import canonical_bytes, sha256_bytes
from fedpriv.report.plots import egress_svg, epsilon_svg

__all__ = ["lookup", "render_html", "report_digest"]

_TIER_CLASS = {1: "t1", 2: "t2", 3: "t3", None: "t0"}

_CSS = """
:root { --fg:#1f2328; --muted:#59636e; --line:#d1d9e0; --soft:#f6f8fa; --accent:#0969da;
  --t1:#1a7f37; --t1bg:#dafbe1; --t2:#9a6700; --t2bg:#fff8c5; --t3:#cf222e; --t3bg:#ffebe9; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Noto Sans", "Liberation Sans",
  "DejaVu Sans", Arial, sans-serif; }
main, header .inner, footer { max-width: 1120px; margin: 0 auto; padding: 0 28px; }
header { background: #0d1117; color: #f0f6fc; padding: 26px 0 22px; }
header h1 { margin: 0 0 4px; font-size: 26px; letter-spacing: -0.01em; }
header .meta { color: #9198a1; font-size: 13px; }
header .meta code { color: #d1d9e0; }
h2 { font-size: 21px; margin: 38px 0 12px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p { margin: 8px 0; }
code, .mono { font-family: ui-monospace, "SFMono-Regular", "DejaVu Sans Mono", Menlo, monospace;
  font-size: 0.88em; }
.headline { font-size: 18px; line-height: 1.5; margin: 18px 0 6px; padding: 16px 18px;
  border-left: 6px solid var(--accent); background: var(--soft); border-radius: 4px; }
.headline.t1 { border-color: var(--t1); } .headline.t2 { border-color: var(--t2); }
.headline.t3, .headline.t0 { border-color: var(--t3); }
.cards { display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px; margin: 16px 0; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: #fff; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 26px; font-weight: 650; line-height: 1.25; margin-top: 2px; }
.card .sub { color: var(--muted); font-size: 13px; }
.card.t1 { border-top: 4px solid var(--t1); } .card.t2 { border-top: 4px solid var(--t2); }
.card.t3, .card.t0 { border-top: 4px solid var(--t3); }
.tiers { display: grid; grid-template-columns: repeat(3, 1fr); gap: 0; margin: 14px 0 4px;
  border: 1px solid var(--line); border-radius: 8px; overflow: hidden; }
.tier { padding: 10px 14px; font-size: 13.5px; opacity: .55; }
.tier b { display: block; font-size: 14px; }
.tier.t1 { background: var(--t1bg); } .tier.t2 { background: var(--t2bg); } .tier.t3 { background: var(--t3bg); }
.tier.here { opacity: 1; outline: 3px solid var(--fg); outline-offset: -3px; }
.tier.here::after { content: "\\25B2  this run (weakest client)"; display: block; font-weight: 700; margin-top: 4px; }
.source { color: var(--muted); font-size: 12.5px; }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 18px; }
.box { border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
.box h3 { margin-top: 2px; }
.box.good { border-left: 5px solid var(--t1); } .box.warn { border-left: 5px solid var(--t2); }
.box.bad { border-left: 5px solid var(--t3); background: var(--t3bg); }
ul { margin: 6px 0; padding-left: 20px; } li { margin: 3px 0; }
figure { margin: 18px 0; border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 6px; }
table { border-collapse: collapse; width: 100%; font-size: 13.5px; margin: 8px 0 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
table.kv th { width: 30%; background: none; color: var(--muted); font-weight: 500; }
table.small { font-size: 12px; }
table.small td, table.small th { padding: 2px 8px; }
.pill { display: inline-block; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600;
  border: 1px solid currentColor; white-space: nowrap; }
.pill.yes { color: var(--t1); } .pill.no { color: var(--t3); } .pill.t2 { color: var(--t2); }
.toc { columns: 2; font-size: 14px; }
.toc a, a { color: var(--accent); text-decoration: none; }
footer { color: var(--muted); font-size: 13px; padding-top: 10px; padding-bottom: 40px;
  border-top: 1px solid var(--line); margin-top: 40px; }
.wrap { overflow-wrap: anywhere; }
@media (max-width: 800px) { .cards { grid-template-columns: 1fr 1fr; } .two, .tiers { grid-template-columns: 1fr; } }
@media print {
  @page { size: A4; margin: 14mm 12mm; }
  body { font-size: 10pt; }
  header { background: none; color: #000; padding: 0 0 8px; border-bottom: 2px solid #000; }
  header .meta, header .meta code { color: #333; }
  main, header .inner, footer { max-width: none; padding: 0; }
  .cards { grid-template-columns: repeat(3, 1fr); gap: 6px; }
  .card, .box, figure, .tiers, tr, .headline { break-inside: avoid; }
  h2, h3 { break-after: avoid; }
  h2 { margin-top: 22px; }
  #plots, #details, #appendix { break-before: page; }
  .toc { display: none; }
  thead { display: table-header-group; }
  table { font-size: 8.5pt; }
  a { color: inherit; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def e(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def report_digest(report: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the whole signed report (signature included)."""
    return sha256_bytes(canonical_bytes(report))


def lookup(report: dict[str, Any], path: str) -> Any:
    """Follow a dotted path (list items by index) into the report."""
    node: Any = report
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _eps_text(v: Any) -> str:
    if v is None:
        return "n/a"
    if v == "inf":
        return "\u221e"
    return f"{float(v):.2f}"


def _sig(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3g}"


def _pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}%"


def _bytes(n: Any) -> str:
    v = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"  # pragma: no cover


def num(report: dict[str, Any], path: str, text: str) -> str:
    """A number bound to the JSON: ``data-field`` names the path, ``data-value`` its JSON value."""
    value = json.dumps(lookup(report, path), allow_nan=False)
    return f'<span class="num" data-field="{e(path)}" data-value="{e(value)}">{e(text)}</span>'


def _yes(flag: Any, yes: str = "yes", no: str = "no") -> str:
    if flag == "mixed":
        return '<span class="pill t2">mixed</span>'
    return f'<span class="pill {"yes" if flag else "no"}">{e(yes if flag else no)}</span>'


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[int] = (),
    cls: str = "",
) -> str:
    """Rows hold HTML fragments that are already escaped."""
    head = "".join(
        f'<th class="n">{e(h)}</th>' if i in numeric else f"<th>{e(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    c = f' class="{cls}"' if cls else ""
    return f"<table{c}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: Iterable[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _ul(items: Iterable[str]) -> str:
    return "<ul>" + "".join(f"<li>{e(i)}</li>" for i in items) + "</ul>"


# --------------------------------------------------------------------------- summary


def _summary(r: dict[str, Any]) -> str:
    s = r["summary"]
    tier = s["tier"]
    tcls = _TIER_CLASS.get(tier, "t0")
    out = ['<section id="summary"><h2>Summary in plain language</h2>']
    out.append(f'<p class="headline {tcls}" id="headline">{e(s["headline"])}</p>')
    cards = []
    if s["dp"] and not r["accounting"]["dp"]:
        cards.append(
            f'<div class="card {tcls}"><div class="label">Client-level guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_max", _eps_text(s["epsilon_max"]))}</div>'
            f'<div class="sub">every client &middot; tier {num(r, "summary.tier", str(tier))}</div></div>'
        )
        cards.append(
            '<div class="card t0"><div class="label">Record-level DP</div>'
            '<div class="value">OFF</div><div class="sub">a decrypted single update is not'
            " protected</div></div>"
        )
        cards.append(
            f'<div class="card"><div class="label">Budget (client-level)</div>'
            f'<div class="value">\u03b5 \u2264 {num(r, "summary.max_epsilon", format(s["max_epsilon"], "g"))}</div>'
            f'<div class="sub">\u03b4 = {num(r, "summary.delta", format(s["delta"], "g"))}</div></div>'
        )
    elif s["dp"]:
        cards.append(
            f'<div class="card {tcls}"><div class="label">Weakest guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_max", _eps_text(s["epsilon_max"]))}</div>'
            f'<div class="sub">{e(s["weakest_client"])} &middot; tier {num(r, "summary.tier", str(tier))}</div></div>'
        )
        s_tier = _tier_of(s["epsilon_min"])
        cards.append(
            f'<div class="card {_TIER_CLASS.get(s_tier, "t0")}"><div class="label">Strongest guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_min", _eps_text(s["epsilon_min"]))}</div>'
            f'<div class="sub">{e(s["strongest_client"])}</div></div>'
        )
        cards.append(
            f'<div class="card"><div class="label">Budget per client</div>'
            f'<div class="value">\u03b5 \u2264 {num(r, "summary.max_epsilon", format(s["max_epsilon"], "g"))}</div>'
            f'<div class="sub">\u03b4 = {num(r, "summary.delta", format(s["delta"], "g"))} &middot; '
            f"{num(r, 'summary.refusals', str(s['refusals']))} refusal(s)</div></div>"
        )
    else:
        cards.append(
            '<div class="card t0"><div class="label">Differential privacy</div>'
            '<div class="value">OFF</div><div class="sub">no formal guarantee (no \u03b5)</div></div>'
        )
    cards.append(
        f'<div class="card {"t1" if s["encrypted"] else "t3"}"><div class="label">Updates encrypted</div>'
        f'<div class="value">{e(s["scheme"].upper() if s["encrypted"] else "NO")}</div>'
        f'<div class="sub">{num(r, "summary.bytes_encrypted", _bytes(s["bytes_encrypted"]))} encrypted, '
        f"{num(r, 'summary.bytes_not_encrypted', _bytes(s['bytes_not_encrypted']))} not</div></div>"
    )
    cards.append(
        f'<div class="card"><div class="label">Federation</div>'
        f'<div class="value">{num(r, "summary.clients", str(s["clients"]))} clients</div>'
        f'<div class="sub">{num(r, "summary.rounds", str(s["rounds"]))} rounds &middot; '
        f"{num(r, 'summary.messages', str(s['messages']))} messages sent</div></div>"
    )
    acc = s["final_accuracy"]
    base = r["utility"]["baseline"]
    base_txt = (
        f"non-private baseline {_pct(base['final_accuracy'])}"
        if base
        else "no non-private baseline run"
    )
    cards.append(
        f'<div class="card"><div class="label">Final accuracy</div>'
        f'<div class="value">{num(r, "summary.final_accuracy", _pct(acc))}</div>'
        f'<div class="sub">held-out set &middot; {e(base_txt)}</div></div>'
    )
    out.append('<div class="cards">' + "".join(cards) + "</div>")
    tiers = [
        (1, "Tier 1 \u2014 \u03b5 \u2264 1", "strong formal privacy guarantees"),
        (2, "Tier 2 \u2014 1 < \u03b5 \u2264 10", "reasonable privacy guarantees"),
        (3, "Tier 3 \u2014 \u03b5 > 10", "weak to no formal privacy guarantees"),
    ]
    out.append(
        '<div class="tiers" id="tiers">'
        + "".join(
            f'<div class="tier t{t}{" here" if t == tier else ""}"><b>{e(title)}</b>{e(text)}</div>'
            for t, title, text in tiers
        )
        + "</div>"
        + f'<p class="source">Epsilon tiers: {e(s["tier_source"])}. Smaller \u03b5 is stronger.</p>'
    )
    good = []
    if s["dp"]:
        good.append(s["weakest"])
        good.append(s["strongest"])
        good.append(
            f"What \u03b5 means: for any single training record, anything anyone can observe"
            f" (updates, models, the final model) becomes at most e^\u03b5 times more or less"
            f" likely because that record was used, except with probability \u03b4 ="
            f" {s['delta']:g}. The protected unit is one record, not one person or one client."
        )
    if s["encrypted"]:
        good.append(s["encryption"])
    good.append("Raw training data never left any device.")
    caveats = [] if s["encrypted"] else [s["encryption"]]
    caveats += [
        f"Not covered by \u03b5: {rel['release']} ({rel['content']})."
        for rel in r["releases_not_covered"]
    ]
    if s["encrypted"]:
        caveats.append(
            "Key custody: every client holds the same decryption key; a server colluding with one"
            " client could read individual updates."
        )
    if s["dp"]:
        caveats.append(
            "The DP noise comes from a standard (not cryptographically secure) random generator."
        )
    out.append(
        '<div class="two"><div class="box good"><h3>What is protected</h3>'
        + _ul(good)
        + '</div><div class="box warn"><h3>What is not</h3>'
        + _ul(caveats)
        + "</div></div>"
    )
    if s["warnings"]:
        out.append(
            '<div class="box bad" id="warnings"><h3>Warnings</h3>' + _ul(s["warnings"]) + "</div>"
        )
    out.append("</section>")
    return "".join(out)


def _tier_of(eps: Any) -> int | None:
    if eps is None:
        return None
    v = math.inf if eps == "inf" else float(eps)
    return 1 if v <= 1 else 2 if v <= 10 else 3


# --------------------------------------------------------------------------- figures


def _figures(r: dict[str, Any]) -> str:
    out = ['<section id="plots"><h2>Figures</h2>']
    svg = epsilon_svg(r)
    cl = r["accounting"].get("client_level")
    if svg is None and cl:
        out.append(
            f'<div class="box warn"><p>Record-level DP was off: there is no per-client \u03b5 to'
            f" plot. The client-level \u03b5, the same for every client, is"
            f" {e(_eps_text(cl['epsilon']))} after {e(cl['rounds_charged'])} round(s)"
            f" (budget {e(cl['max_epsilon'])}).</p></div>"
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
        f'<figure id="fig-egress">{egress_svg(r)}<figcaption>Every message a device sent, from'
        " the hash-chained egress record. Top: encrypted model updates (the server cannot read"
        " them). Bottom, hatched: unencrypted messages (training metrics), which the server"
        " reads.</figcaption></figure></section>"
    )
    return "".join(out)


# --------------------------------------------------------------------------- details


def _details(r: dict[str, Any]) -> str:
    parts = ['<section id="details"><h2>Details</h2>']
    titles = [
        ("identification", "1. Identification"),
        ("roles", "2. Roles and purpose"),
        ("data", "3. Where the data lives"),
        ("egress", "4. What left each device"),
        ("encryption", "5. Encryption and key custody"),
        ("unit", "6. Privacy unit and threat model"),
        ("mechanism", "7. Mechanism as actually run"),
        ("accounting", "8. Accounting"),
        ("budget", "9. Budget policy"),
        ("releases", "10. Releases not covered by epsilon"),
        ("utility", "11. Utility"),
        ("audit", "12. Empirical audit"),
        ("retention", "13. Retention and deletion"),
        ("signoff", "14. Sign-off"),
    ]
    parts.append(
        '<ol class="toc">'
        + "".join(f'<li><a href="#s-{a}">{e(t)}</a></li>' for a, t in titles)
        + "</ol>"
    )
    makers = [
        _identification,
        _roles,
        _data,
        _egress,
        _encryption,
        _unit,
        _mechanism,
        _accounting,
        _budget,
        _releases,
        _utility,
        _audit,
        _retention,
        _signoff,
    ]
    for (anchor, title), make in zip(titles, makers, strict=True):
        parts.append(f'<h3 id="s-{anchor}">{e(title)}</h3>{make(r)}')
    parts.append("</section>")
    return "".join(parts)


def _identification(r: dict[str, Any]) -> str:
    i = r["identification"]
    sw = ", ".join(f"{k} {v}" for k, v in i["software"].items() if k != "recorded_when")
    out = _kv(
        [
            ("run id", f"<code>{e(i['run_id'])}</code>"),
            ("run folder", f"<code>{e(i['run_folder'])}</code> ({e(i['deployment'])})"),
            ("started / finished", f"{e(i['started'])} / {e(i['finished'])}"),
            ("stop reason", e(i["stop_reason"] or "completed all rounds")),
            ("report created", e(i["report_created"])),
            ("config hash", f'<code class="wrap">{e(i["config_hash"])}</code>'),
            (
                "model",
                f"{e(i['model']['architecture'])}, {e(i['model']['num_values'])} parameters,"
                f' sha256 <code class="wrap">{e(i["model"]["sha256"])}</code>',
            ),
            (
                "software",
                e(sw) + f" <span class='source'>({e(i['software']['recorded_when'])})</span>",
            ),
        ]
    )
    files = _table(
        ["file", "bytes", "sha256"],
        (
            [
                f"<code>{e(f['path'])}</code>",
                e(f["bytes"]),
                f'<code class="wrap">{e(f["sha256"])}</code>',
            ]
            for f in i["files"]
        ),
        numeric=(1,),
        cls="small",
    )
    chains = _table(
        ["hash-chained record", "lines", "head hash", "file sha256"],
        (
            [
                f"<code>{e(c['path'])}</code>",
                e(c["lines"]),
                f'<code class="wrap">{e(c["head_hash"])}</code>',
                f'<code class="wrap">{e(c["sha256"])}</code>',
            ]
            for c in i["chains"].values()
        ),
        numeric=(1,),
        cls="small",
    )
    return out + files + chains


def _roles(r: dict[str, Any]) -> str:
    ro = r["roles"]
    return f"<p><b>Purpose:</b> {e(ro['purpose'])}</p>" + _table(
        ["role", "who", "holds", "can see"],
        ([e(p["role"]), e(p["who"]), e(p["holds"]), e(p["can_see"])] for p in ro["parties"]),
    )


def _data(r: dict[str, Any]) -> str:
    d = r["data_locations"]
    alpha = f", Dirichlet \u03b1 = {d['dirichlet_alpha']:g}" if d["dirichlet_alpha"] else ""
    return (
        f"<p>{e(d['statement'])}</p><p>Dataset <code>{e(d['dataset'])}</code>, split"
        f" {e(d['partitioner'])}{e(alpha)}; held-out set: {e(d['heldout']['records'])} records, held"
        f" by {e(d['heldout']['held_by'])}.</p>"
        + _table(
            [
                "site (client)",
                "training records",
                "local test share",
                "records leave the device",
                "rounds trained",
            ],
            (
                [
                    e(s["client_id"]),
                    e(s["records"]),
                    f"{100 * s['local_test_fraction']:.0f}%",
                    _yes(not s["leaves_device"], "never", "LEAVES"),
                    e(", ".join(map(str, s["rounds_trained"])) or "none"),
                ]
                for s in d["sites"]
            ),
            numeric=(1, 2),
        )
    )


def _egress(r: dict[str, Any]) -> str:
    eg = r["egress"]
    summary = _table(
        ["kind", "messages", "bytes", "encrypted", "DP-protected", "content"],
        (
            [
                f"<code>{e(k['kind'])}</code>",
                e(k["messages"]),
                e(_bytes(k["bytes"])),
                _yes(k["encrypted"]),
                _yes(k["dp_protected"]),
                e(k["content"]),
            ]
            for k in eg["summary"]
        ),
        numeric=(1, 2),
    )
    missing = _table(
        ["also sent, not in the egress record", "content", "encrypted", "DP-protected", "note"],
        (
            [
                f"<code>{e(k['kind'])}</code>",
                e(k["content"]),
                _yes(k["encrypted"]),
                _yes(k["dp_protected"]),
                e(k["note"]),
            ]
            for k in eg["not_in_record"]
        ),
    )
    per_client = _table(
        ["client", "messages", "encrypted", "not encrypted", "DP-protected"],
        (
            [
                e(c["client_id"]),
                e(c["messages"]),
                e(_bytes(c["bytes_encrypted"])),
                e(_bytes(c["bytes_not_encrypted"])),
                e(_bytes(c["bytes_dp_protected"])),
            ]
            for c in eg["per_client"]
        ),
        numeric=(1, 2, 3, 4),
    )
    return (
        f"<p>From <code>{e(eg['source'])}</code>, a hash-chained record of every message a client"
        " sent; each message is listed in the <a href='#appendix'>appendix</a>.</p>"
        + summary
        + missing
        + per_client
    )


def _appendix(r: dict[str, Any]) -> str:
    eg = r["egress"]
    messages = _table(
        [
            "#",
            "round",
            "client",
            "kind",
            "bytes",
            "encrypted",
            "DP",
            "accepted",
            "sha256 (first 16)",
        ],
        (
            [
                e(m["seq"]),
                e(m["round"]),
                e(m["client_id"]),
                e(m["kind"]),
                e(m["bytes"]),
                _yes(m["encrypted"]),
                _yes(m["dp_protected"]),
                _yes(m["accepted"]),
                f"<code>{e(m['sha256'][:16])}</code>",
            ]
            for m in eg["messages"]
        ),
        numeric=(0, 1, 4),
        cls="small",
    )
    return (
        '<section id="appendix"><h2>Appendix: every message in the egress record</h2>'
        + messages
        + "</section>"
    )


def _encryption(r: dict[str, Any]) -> str:
    x = r["encryption"]
    if not x["enabled"]:
        head = (
            '<p class="box bad">Encryption was off: the server saw every update in plaintext.</p>'
        )
    else:
        sec = x["security"]
        level = (
            f"{sec['level_bits']}-bit" if sec["level_bits"] else "below 128-bit (check parameters)"
        )
        p = x["parameters"]
        head = _kv(
            [
                ("scheme", e(x["scheme"].upper())),
                ("ring degree N", e(p.get("poly_modulus_degree"))),
                ("coefficient modulus bits", e(p.get("coeff_modulus_bits"))),
                ("plaintext modulus", e(p.get("plain_modulus"))),
                (
                    "security",
                    f"{e(level)} ({e(sec['total_coeff_modulus_bits'])} of at most"
                    f" {e(sec['max_bits_for_128'])} modulus bits; {e(sec['standard'])})",
                ),
                (
                    "parameters fingerprint",
                    f'<code class="wrap">{e(x["params_fingerprint"])}</code>',
                ),
                (
                    "quantisation",
                    f"values clipped to \u00b1{e(x['quantization']['value_range'])},"
                    f" {e(x['quantization']['clipped_values_total'])} value(s) clipped in total;"
                    f" worst-case rounding error per weight {e(_sig(x['quantization']['max_error_bound']))}",
                ),
            ]
        )
    custody = _table(
        ["party", "holds", "can decrypt"],
        ([e(k["party"]), e(k["holds"]), e(k["can_decrypt"])] for k in x["key_custody"]),
    )
    return head + custody + f"<p><b>Collusion:</b> {e(x['collusion'])}</p>"


def _unit(r: dict[str, Any]) -> str:
    u = r["privacy_unit"]
    return (
        _kv(
            [
                ("privacy unit", e(u["unit"])),
                ("meaning", e(u["unit_description"])),
                ("adjacency", e(u["adjacency"] or "n/a")),
                ("outputs covered", e("; ".join(u["covered_outputs"]) or "none")),
            ]
        )
        + "<p><b>Threat model</b></p>"
        + _ul(u["threat_model"])
    )


def _fmt_list(xs: Sequence[Any], fmt: str = "{}") -> str:
    return ", ".join(fmt.format(x) for x in xs) or "\u2014"


def _mechanism(r: dict[str, Any]) -> str:
    m = r["mechanism"]
    rng = m["rng"]
    head = _kv(
        [
            ("algorithm", e(m["algorithm"])),
            ("clip norm", e(m["clip_norm"] if m["clip_norm"] is not None else "n/a")),
            ("sampling", e(m["sampling"])),
            ("batch size / local epochs", f"{e(m['batch_size'])} / {e(m['local_epochs'])}"),
            ("learning rate", e(m["learning_rate"])),
            ("rounds configured / run", f"{e(m['rounds_configured'])} / {e(m['rounds_run'])}"),
            ("per-sample gradients", e(m["grad_sample_mode"])),
            ("noise", e(m["noise_planning"] or "none")),
            (
                "random generator",
                f"{_yes(rng['cryptographically_secure'], 'secure', 'not cryptographically secure')}"
                f" {e(rng['generator'])}; seeded from {e(rng['seeded_from'])}. {e(rng['note'])}",
            ),
        ]
    )
    rows = (
        [
            e(c["client_id"]),
            e(c["records"]),
            e(_fmt_list(c["sample_rate"], "{:.4g}")),
            e(f"{c['sample_rate_expected']:.4g}" if c["sample_rate_expected"] else "\u2014"),
            e(_fmt_list(c["noise_multiplier"], "{:.4f}")),
            e(_fmt_list(c["steps_per_round"])),
            e(c["steps_total"]),
            e(_fmt_list(c["rounds_trained"])),
            e(_fmt_list(c["rounds_refused"])),
        ]
        for c in m["per_client"]
    )
    return head + _table(
        [
            "client",
            "records",
            "q (as run)",
            "q = 1/\u2308n/B\u2309",
            "noise \u03c3",
            "steps/round",
            "steps",
            "rounds trained",
            "refused",
        ],
        rows,
        numeric=(1, 2, 3, 4, 5, 6),
    )


def _client_level(a: dict[str, Any]) -> str:
    cl = a.get("client_level")
    if not cl:
        return ""
    return "<p><b>Client-level DP</b> (the aggregate of each round)</p>" + _kv(
        [
            ("adjacency", e(cl["adjacency"])),
            (
                "mechanism",
                f"clip norm {e(cl['clip_norm'])}, noise multiplier z = {e(format(cl['noise_multiplier'], '.4f'))},"
                f" q = {e(format(cl['sample_rate'], '.4g'))}, at least k_min = {e(cl['k_min'])} updates per sum."
                f" {e(cl['noise'])}",
            ),
            (
                "\u03b5 after the run",
                f"{e(_eps_text(cl['epsilon']))} ({e(cl['accountant'].upper())}), PLD cross-check"
                f" {e(_eps_text(cl['epsilon_pld']))}, \u03b4 = {e(cl['delta'])}, over"
                f" {e(cl['rounds_charged'])} round(s); budget {e(cl['max_epsilon'])}",
            ),
            ("approximations", e(cl["approximations"])),
        ]
    )


def _accounting(r: dict[str, Any]) -> str:
    a = r["accounting"]
    if not a["dp"]:
        if a.get("client_level"):
            return "<p>Record-level DP was off.</p>" + _client_level(a)
        return '<p class="box bad">No accounting: differential privacy was off.</p>'
    cc = a["cross_check"]
    head = _kv(
        [
            ("accountant", f"{e(a['accountant'].upper())} ({e(a['accountant_library'])})"),
            ("\u03b4", e(a["delta_rationale"])),
            (
                "\u03b5 max / median / min",
                " / ".join(_eps_text(a["epsilon"][k]) for k in ("max", "median", "min")),
            ),
            (
                "cross-check",
                f"{e(cc['accountant'].upper())} ({e(cc['library'])}), relative tolerance"
                f" {e(cc['relative_tolerance'])}: "
                + _yes(cc["all_within_tolerance"], "all within", "NOT all within")
                + f" <span class='source'>{e(cc['rule'])}</span>",
            ),
            ("recompute", f"<code>{e(a['recompute'])}</code>"),
        ]
    )
    rows = []
    for c in a["per_client"]:
        tier = _tier_of(c["epsilon"])
        hist = "; ".join(f"[{h[0]:.4f}, {h[1]:.4g}, {h[2]}]" for h in c["history"]) or "\u2014"
        rows.append(
            [
                e(c["client_id"]),
                e(_eps_text(c["epsilon"])),
                e(_eps_text(c["epsilon_pld"])),
                f'<span class="pill {"yes" if tier == 1 else "t2" if tier == 2 else "no"}">tier {e(tier)}</span>',
                f"<code>{e(hist)}</code>",
            ]
        )
    per_client = _table(
        [
            "client",
            f"\u03b5 ({a['accountant'].upper()}, reported)",
            "\u03b5 (PLD cross-check)",
            "tier",
            "history [\u03c3, q, steps]",
        ],
        rows,
        numeric=(1, 2),
    )
    ids = [c["client_id"] for c in a["per_client"]]
    grid = []
    for rnd in a["per_round"]:
        by = {c["client_id"]: c for c in rnd["clients"]}
        cells = [e(rnd["round"])]
        for cid in ids:
            c = by.get(cid)
            if c is None:
                cells.append("")
            else:
                mark = " \u2716" if c["status"] == "refused" else ""
                cells.append(e(_eps_text(c["epsilon"]) + mark))
        grid.append(cells)
    per_round = _table(["round", *ids], grid, numeric=tuple(range(len(ids) + 1)), cls="small")
    return (
        head
        + per_client
        + "<p>Cumulative \u03b5 per client after each round (\u2716 = refused):</p>"
        + per_round
        + _client_level(a)
    )


def _budget(r: dict[str, Any]) -> str:
    b = r["budget_policy"]
    if not b["dp"]:
        return "<p>No privacy budget: differential privacy was off.</p>"
    pairs = []
    if b["max_epsilon"] is not None:
        pairs += [
            ("maximum \u03b5 per client", e(format(b["max_epsilon"], "g"))),
            ("planned target \u03b5", e(format(b["target_epsilon"], "g"))),
            ("headroom left (weakest client)", e(_eps_text(b.get("headroom")))),
            ("when the budget is reached", e(b["on_reach"])),
            ("resets", e(b["resets"])),
        ]
    if b.get("client_max_epsilon") is not None:
        pairs += [
            ("maximum client-level \u03b5", e(format(b["client_max_epsilon"], "g"))),
            ("when it is reached", e(b["client_on_reach"])),
        ]
        if b["max_epsilon"] is None:
            pairs.append(("headroom left", e(_eps_text(b.get("headroom")))))
    if b.get("stop_reason"):
        pairs.append(("the run stopped early", e(b["stop_reason"])))
    head = _kv(pairs)
    if not b["refusals"]:
        return head + "<p>No client refused a round: every client stayed within its budget.</p>"
    return head + _table(
        ["round", "client", "\u03b5 already spent", "reason"],
        (
            [e(x["round"]), e(x["client_id"]), e(_eps_text(x["epsilon_spent"])), e(x["reason"])]
            for x in b["refusals"]
        ),
        numeric=(0, 2),
    )


def _releases(r: dict[str, Any]) -> str:
    return _table(
        ["release", "seen by", "content", "why \u03b5 does not cover it"],
        (
            [e(x["release"]), e(x["recipient"]), e(x["content"]), e(x["why_not_covered"])]
            for x in r["releases_not_covered"]
        ),
    )


def _utility(r: dict[str, Any]) -> str:
    u = r["utility"]
    base = u["baseline"]
    pairs = [
        ("metric", e(u["metric"])),
        (
            "before training / final",
            f"{e(_pct(u['initial_accuracy']))} / {e(_pct(u['final_accuracy']))}",
        ),
    ]
    if base:
        pairs.append(
            (
                "non-private baseline",
                f"{e(_pct(base['final_accuracy']))} (run <code>{e(base['run_folder'])}</code>,"
                f" DP {e(base['privacy_mode'])}, encryption {e(base['encryption'])});"
                f" accuracy cost of privacy {e(_pct(u['accuracy_cost']))}",
            )
        )
    else:
        pairs.append(("non-private baseline", e(u["note"])))
    return _kv(pairs) + _table(
        ["round", "held-out accuracy", "federated accuracy", "accepted", "refused"],
        (
            [
                e(x["round"]),
                e(_pct(x["heldout_accuracy"])),
                e(_pct(x["federated_accuracy"])),
                e(x["accepted"]),
                e(x["refused"]),
            ]
            for x in u["per_round"]
        ),
        numeric=(0, 1, 2, 3, 4),
    )


def _audit(r: dict[str, Any]) -> str:
    a = r["audit"]
    out = f"<p>{e(a['note'])}</p>"
    if a["result"] is not None:
        out += (
            f"<pre class='mono wrap'>{e(json.dumps(a['result'], indent=2, sort_keys=True))}</pre>"
        )
    return out


def _retention(r: dict[str, Any]) -> str:
    t = r["retention"]
    return (
        f"<p><b>Policy:</b> {e(t['policy'])}</p>"
        + _table(
            ["path (in the run folder)", "contents", "handling"],
            (
                [f"<code>{e(x['path'])}</code>", e(x["contents"]), e(x["handling"])]
                for x in t["artifacts"]
            ),
        )
        + f"<p>{e(t['signing_key'])}.</p><p>{e(t['deletion'])}</p>"
    )


def _signoff(r: dict[str, Any]) -> str:
    s = r["sign_off"]
    return _kv(
        [
            ("algorithm", e(s["algorithm"])),
            ("key", e(s["key_kind"])),
            ("public key fingerprint (SHA-256)", num(r, "sign_off.fingerprint", s["fingerprint"])),
            ("signed at", e(s["signed_at"])),
            ("what is signed", e(s["signed_content"])),
            ("signature", f'<code class="wrap">{e(s["signature"])}</code>'),
            ("how to verify", f"<code>{e(s['how_to_verify'])}</code>"),
        ]
    ) + (
        "<p>A valid signature proves the report was not changed since it was signed by the key"
        " above; it proves who signed only if you obtained that fingerprint from the run's owner"
        " through another channel. <code>fedpriv report verify</code> also recomputes every"
        " client's \u03b5 from the ledger and checks the hash chains and the egress record.</p>"
    )


# --------------------------------------------------------------------------- page


def render_html(report: dict[str, Any]) -> str:
    """The whole page (deterministic for a given report and matplotlib version)."""
    # Key order must not depend on how the dict was built (fresh vs. read back from disk).
    report = json.loads(canonical_bytes(report))
    i, s = report["identification"], report["sign_off"]
    title = f"Privacy report \u2014 {i['run_name']}"
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>",
            "<meta name='viewport' content='width=device-width, initial-scale=1'>",
            # Forbid every fetch: the page must work (and leak nothing) offline.
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">",
            f"<meta name='fedpriv-report-digest' content='{report_digest(report)}'>",
            f"<meta name='fedpriv-report-schema' content='{e(report['schema_version'])}'>",
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
            f"<header><div class='inner'><h1>{e(title)}</h1><div class='meta'>run"
            f" <code>{e(i['run_id'])}</code> &middot; {e(i['started'])} to {e(i['finished'])}"
            f" &middot; report {e(i['report_created'])} &middot; signed Ed25519, key"
            f" <code>{e(s['fingerprint'][:16])}\u2026</code></div></div></header><main>",
            _summary(report),
            _figures(report),
            _details(report),
            _appendix(report),
            "</main><footer>Generated by fedpriv from the run's own records. Check it with"
            f" <code>fedpriv report verify {e(i['run_folder'])} --trusted-key"
            f" {e(s['fingerprint'])}</code>." + "</footer></body></html>\n",
        ]
    )
