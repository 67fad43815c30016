"""The report page: one self-contained HTML file a non-engineer can read and print.

This module is only the page's frame (head, style, header, footer) and its order: the summary,
the two figures, one detailed part per report section (each drawn by its own module in
:mod:`fedpriv.report.sections`), and the appendix. Every piece of text from the report is
escaped; the page carries a Content-Security-Policy that forbids every fetch, and its figures are
inline SVG. Each number in the summary is tagged ``data-field="<json path>"`` and
``data-value="<json value>"`` so tests and ``fedpriv report verify`` can match it to the JSON.
"""

from __future__ import annotations

import json
from typing import Any

from fedpriv.report.canonical import canonical_bytes, sha256_bytes
from fedpriv.report.markup import esc
from fedpriv.report.plots import render_figures
from fedpriv.report.sections import SECTIONS
from fedpriv.report.sections.data import render_appendix
from fedpriv.report.sections.summary import render_summary

__all__ = ["render_html", "report_digest"]

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


def report_digest(report: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the whole signed report (signature included)."""
    return sha256_bytes(canonical_bytes(report))


def _details(r: dict[str, Any]) -> str:
    titles = [(s.anchor, f"{n}. {s.title}") for n, s in enumerate(SECTIONS, start=1)]
    parts = ['<section id="details"><h2>Details</h2>']
    parts.append(
        '<ol class="toc">'
        + "".join(f'<li><a href="#s-{a}">{esc(t)}</a></li>' for a, t in titles)
        + "</ol>"
    )
    for (anchor, title), section in zip(titles, SECTIONS, strict=True):
        parts.append(f'<h3 id="s-{anchor}">{esc(title)}</h3>{section.render(r)}')
    parts.append("</section>")
    return "".join(parts)


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
            f"<meta name='fedpriv-report-schema' content='{esc(report['schema_version'])}'>",
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
            f"<header><div class='inner'><h1>{esc(title)}</h1><div class='meta'>run"
            f" <code>{esc(i['run_id'])}</code> &middot; {esc(i['started'])} to"
            f" {esc(i['finished'])} &middot; report {esc(i['report_created'])} &middot; signed"
            f" Ed25519, key <code>{esc(s['fingerprint'][:16])}\u2026</code></div></div></header>"
            "<main>",
            render_summary(report),
            render_figures(report),
            _details(report),
            render_appendix(report),
            "</main><footer>Generated by fedpriv from the run's own records. Check it with"
            f" <code>fedpriv report verify {esc(i['run_folder'])} --trusted-key"
            f" {esc(s['fingerprint'])}</code>." + "</footer></body></html>\n",
        ]
    )
