"""HTML building blocks for the report page: escaping, tables, pills, and numbers tied to the JSON.

Every piece of text from the report goes through :func:`esc`. A number the reader must be able to
trust is written with :func:`num`, which tags it ``data-field="<json path>"`` and
``data-value="<json value>"`` so tests and ``fedpriv report verify`` can match it to the JSON.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "TIER_CLASS",
    "eps_text",
    "esc",
    "fmt_list",
    "kv",
    "lookup",
    "num",
    "pct",
    "pill",
    "sig",
    "size_text",
    "table",
    "ul",
]

# CSS class of each epsilon tier (t0: no guarantee).
TIER_CLASS = {1: "t1", 2: "t2", 3: "t3", None: "t0"}


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def lookup(report: Mapping[str, Any], path: str) -> Any:
    """Follow a dotted path (list items by index) into the report."""
    node: Any = report
    for part in path.split("."):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def num(report: Mapping[str, Any], path: str, text: str) -> str:
    """A number bound to the JSON: ``data-field`` names the path, ``data-value`` its JSON value."""
    value = json.dumps(lookup(report, path), allow_nan=False)
    return (
        f'<span class="num" data-field="{esc(path)}" data-value="{esc(value)}">{esc(text)}</span>'
    )


def eps_text(v: Any) -> str:
    """An epsilon for people: two decimals, infinity as the sign, n/a when there is none."""
    if v is None:
        return "n/a"
    if v == "inf":
        return "\u221e"
    return f"{float(v):.2f}"


def sig(v: Any) -> str:
    """Three significant digits."""
    return "n/a" if v is None else f"{float(v):.3g}"


def pct(v: Any) -> str:
    return "n/a" if v is None else f"{100 * float(v):.1f}%"


def size_text(n: Any) -> str:
    """A byte count in B, KiB, MiB or GiB."""
    v = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if v < 1024 or unit == "GiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} GiB"  # pragma: no cover


def fmt_list(xs: Sequence[Any], fmt: str = "{}") -> str:
    return ", ".join(fmt.format(x) for x in xs) or "\u2014"


def pill(flag: Any, yes: str = "yes", no: str = "no") -> str:
    """A coloured yes/no badge (``"mixed"`` gets its own)."""
    if flag == "mixed":
        return '<span class="pill t2">mixed</span>'
    return f'<span class="pill {"yes" if flag else "no"}">{esc(yes if flag else no)}</span>'


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Sequence[int] = (),
    cls: str = "",
) -> str:
    """A table; ``rows`` hold HTML fragments that are already escaped, headers are escaped here."""
    head = "".join(
        f'<th class="n">{esc(h)}</th>' if i in numeric else f"<th>{esc(h)}</th>"
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


def kv(pairs: Iterable[tuple[str, str]]) -> str:
    """A two-column key/value table; values are HTML fragments, keys are escaped here."""
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{v}</td></tr>" for k, v in pairs)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def ul(items: Iterable[str]) -> str:
    """A bullet list of plain text (escaped here)."""
    return "<ul>" + "".join(f"<li>{esc(i)}</li>" for i in items) + "</ul>"
