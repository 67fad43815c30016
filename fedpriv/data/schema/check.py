"""Check data against a :class:`~fedpriv.data.schema.model.DataSchema`; find every violation.

Each violated rule is one :class:`Violation` with a stable check name (``label-set``,
``range:age``, ``image-shape``...), the file, the column and the first rows where it applies.
The names are what a device may send to the server; the messages stay with the data owner (they
quote values from the data).

Check names
-----------
``readable``, ``not-empty``, ``data-kind``, ``row-length``, ``duplicate-columns``,
``column-missing:<column>``, ``extra-columns``, ``missing:<column>``, ``type:<column>``,
``range:<column>``, ``scale:<column>``, ``label-set``, ``class-balance``, ``label-count``,
``image-shape``, ``pixel-type``, ``pixel-range``. Column names in check names always come from
the schema, never from the data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedpriv.data.schema.model import DataSchema, FeatureRule, ImageRule, LabelRule
from fedpriv.data.schema.raw import NA_TOKENS, RawImages, RawPart, RawTable, Unreadable, read_raw
from fedpriv.errors import DataCheckError

__all__ = [
    "CHECK_NAMES",
    "CheckReport",
    "Violation",
    "check_data",
    "check_parts",
    "fmt_number",
    "plural",
]

CHECK_NAMES = (
    "readable",
    "not-empty",
    "data-kind",
    "row-length",
    "duplicate-columns",
    "column-missing:<column>",
    "extra-columns",
    "missing:<column>",
    "type:<column>",
    "range:<column>",
    "scale:<column>",
    "label-set",
    "class-balance",
    "label-count",
    "image-shape",
    "pixel-type",
    "pixel-range",
)
"""Every check name (``<column>``: a column the schema names)."""

_SHOW = 5  # rows/values quoted per violation


@dataclass(frozen=True)
class Violation:
    """One violated check, located as precisely as the data allows."""

    check: str
    message: str
    where: str = ""
    column: str | None = None
    rows: tuple[int, ...] = ()
    """The first offending rows (1-based data rows; images: 1-based image index)."""
    lines: tuple[int, ...] = ()
    """File lines of ``rows`` (CSV only)."""
    count: int = 0
    """Number of offending rows or cells in all (0 when not countable)."""
    unit: str = "row"
    """What ``rows`` count: ``row`` (tables) or ``image``."""

    def location(self) -> str:
        parts = []
        if self.where:
            parts.append(self.where)
        if self.column is not None:
            parts.append(f"column {self.column!r}")
        if self.rows:
            more = self.count - len(self.rows)
            one = len(self.rows) == 1 and more <= 0
            text = f"{self.unit}{'' if one else 's'} " + ", ".join(map(str, self.rows))
            text += f" and {more} more" if more > 0 else ""
            if self.lines:
                text += f" (file line{'s' if len(self.lines) > 1 else ''} "
                text += ", ".join(map(str, self.lines)) + (", ...)" if more > 0 else ")")
            parts.append(text)
        return ", ".join(parts)

    def describe(self) -> str:
        loc = self.location()
        return f"{self.check}: {self.message}" + (f" [{loc}]" if loc else "")


@dataclass(frozen=True)
class CheckReport:
    """The outcome of checking one dataset spec against one schema."""

    spec: str
    rows: int
    violations: tuple[Violation, ...]

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def failed_checks(self) -> tuple[str, ...]:
        """Names of the violated checks, each once, in the order found."""
        return tuple(dict.fromkeys(v.check for v in self.violations))

    def format(self) -> str:
        """Every violation, for the data owner: check name, what is wrong, and where."""
        if self.ok:
            return f"{self.spec}: {plural(self.rows, 'row')} match the schema"
        names = self.failed_checks
        lines = [
            f"{self.spec} does not match its schema: {plural(len(names), 'check')} failed "
            f"({', '.join(names)})"
        ]
        width = max(len(v.check) for v in self.violations)
        for v in self.violations:
            lines.append(f"  {v.check:<{width}}  {v.message}")
            loc = v.location()
            if loc:
                lines.append(f"  {'':<{width}}  at {loc}")
        return "\n".join(lines)

    def raise_if_failed(self) -> None:
        """Raise :class:`~fedpriv.errors.DataCheckError` (exit code 3) naming every violation."""
        if not self.ok:
            raise DataCheckError(self.format(), self.failed_checks)


# ----------------------------------------------------------------------------- entry points


def check_data(spec: str, schema: DataSchema) -> CheckReport:
    """Read ``spec`` leniently and check it against ``schema``; never raises for bad data."""
    try:
        parts = read_raw(spec, label_column=schema.label.column)
    except Unreadable as e:
        name = "not-empty" if e.empty else "readable"
        return CheckReport(spec, 0, (Violation(name, str(e)),))
    return check_parts(spec, parts, schema)


def check_parts(spec: str, parts: Sequence[RawPart], schema: DataSchema) -> CheckReport:
    """Check already-read parts (see :func:`fedpriv.data.schema.raw.read_raw`)."""
    out: list[Violation] = []
    rows = 0
    for part in parts:
        rows += part.num_rows
        if isinstance(part, RawImages):
            _check_images(part, schema, out)
        elif schema.kind == "image":
            _check_pixel_table(part, schema, out)
        else:
            _check_table(part, schema, out)
    if rows < schema.min_rows and not any(v.check == "not-empty" for v in out):
        out.insert(
            0,
            Violation(
                "not-empty",
                f"{rows} rows, the schema needs at least {schema.min_rows}",
                parts[0].where if parts else "",
            ),
        )
    return CheckReport(spec, rows, tuple(out))


# ----------------------------------------------------------------------------- helpers


def plural(n: int, word: str) -> str:
    """``1 row``, ``3 rows``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def fmt_number(v: float) -> str:
    """A number as a person would write it: ``5``, ``0.125``, ``1.5e+20``."""
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:.6g}"


def _located(
    check: str,
    message: str,
    where: str,
    column: str | None,
    mask: np.ndarray,
    rows: np.ndarray,
    lines: np.ndarray | None,
    unit: str = "row",
) -> Violation:
    idx = np.flatnonzero(mask)
    first = idx[:_SHOW]
    return Violation(
        check,
        message,
        where,
        column,
        tuple(int(r) for r in rows[first]),
        tuple(int(ln) for ln in lines[first]) if lines is not None else (),
        len(idx),
        unit,
    )


def _numeric_key(v: str) -> float | None:
    try:
        return float(v)
    except ValueError:
        return None


def _check_labels(
    labels: np.ndarray,
    rule: LabelRule,
    where: str,
    rows: np.ndarray,
    lines: np.ndarray | None,
    out: list[Violation],
    unit: str = "row",
) -> None:
    col = rule.column
    text = labels.astype(str)
    missing = np.isin(np.char.lower(text), list(NA_TOKENS))
    if missing.any():
        out.append(
            _located(
                f"missing:{col}",
                f"{plural(int(missing.sum()), 'row')} without a label",
                where,
                col,
                missing,
                rows,
                lines,
                unit,
            )
        )
    allowed = list(rule.values)
    unknown = ~missing & ~np.isin(text, allowed)
    if unknown.any():
        odd = list(dict.fromkeys(text[unknown].tolist()))
        shown = ", ".join(repr(v) for v in odd[:_SHOW]) + (" ..." if len(odd) > _SHOW else "")
        label_set = ", ".join(allowed) if len(allowed) <= 12 else f"{len(allowed)} labels"
        out.append(
            _located(
                "label-set",
                f"{plural(int(unknown.sum()), 'label')} outside the label set ({label_set}): {shown}",
                where,
                col,
                unknown,
                rows,
                lines,
                unit,
            )
        )
    valid = ~missing & ~unknown
    n = int(valid.sum())
    if n and (rule.min_fraction is not None or rule.max_fraction is not None):
        counts = {v: 0 for v in allowed}
        uniq, cnt = np.unique(text[valid], return_counts=True)
        counts.update({str(u): int(c) for u, c in zip(uniq, cnt, strict=True)})
        off = []
        for v, c in counts.items():
            frac = c / n
            if rule.min_fraction is not None and frac < rule.min_fraction:
                off.append(f"{v!r} {frac:.1%} < {rule.min_fraction:.1%}")
            elif rule.max_fraction is not None and frac > rule.max_fraction:
                off.append(f"{v!r} {frac:.1%} > {rule.max_fraction:.1%}")
        if off:
            out.append(
                Violation(
                    "class-balance",
                    f"class shares out of bounds: {'; '.join(off)}",
                    where,
                    col,
                )
            )


# ----------------------------------------------------------------------------- tables


def _table_layout(t: RawTable, schema: DataSchema, out: list[Violation]) -> None:
    """Checks every table shares: ragged rows, duplicate headers, a missing label column."""
    if t.ragged:
        rows = np.asarray([r for r, _, _ in t.ragged])
        lines = np.asarray([ln for _, ln, _ in t.ragged])
        widths = sorted({w for _, _, w in t.ragged})
        out.append(
            _located(
                "row-length",
                f"{plural(len(t.ragged), 'row')} with {'/'.join(map(str, widths))} fields instead of "
                f"{len(t.header)} like the header",
                t.where,
                None,
                np.ones(len(rows), dtype=bool),
                rows,
                lines,
            )
        )
    dup = sorted({h for h in t.header if t.header.count(h) > 1})
    if dup:
        out.append(
            Violation(
                "duplicate-columns",
                f"the header repeats {', '.join(repr(d) for d in dup)}",
                t.where,
            )
        )
    if t.labels is None:
        out.append(
            Violation(
                f"column-missing:{schema.label.column}",
                f"no label column {schema.label.column!r} in the header",
                t.where,
                schema.label.column,
            )
        )


def _check_table(t: RawTable, schema: DataSchema, out: list[Violation]) -> None:
    _table_layout(t, schema, out)
    names = {f.name for f in schema.features}
    for f in schema.features:
        if f.name not in t.header:
            out.append(
                Violation(
                    f"column-missing:{f.name}",
                    f"column {f.name!r} is missing",
                    t.where,
                    f.name,
                )
            )
    extra = [h for h in t.header if h not in names and h != schema.label.column]
    if extra and not schema.allow_extra_columns:
        out.append(
            Violation(
                "extra-columns",
                f"{plural(len(extra), 'column')} the schema does not name: "
                + ", ".join(repr(h) for h in extra[:_SHOW])
                + (" ..." if len(extra) > _SHOW else ""),
                t.where,
            )
        )
    for f in schema.features:
        if f.name in t.header:
            _check_feature(t, t.header.index(f.name), f, out)
    if t.labels is not None:
        _check_labels(t.labels, schema.label, t.where, t.rows, t.lines, out)


def _check_feature(t: RawTable, j: int, f: FeatureRule, out: list[Violation]) -> None:
    v = t.values[:, j]
    missing = t.missing[:, j]
    n = len(v)

    def add(check: str, message: str, mask: np.ndarray) -> None:
        out.append(_located(check, message, t.where, f.name, mask, t.rows, t.lines))

    if n and missing.mean() > f.max_missing_fraction + 1e-12:
        allowed = "none" if f.max_missing_fraction == 0 else f"{f.max_missing_fraction:.1%}"
        add(
            f"missing:{f.name}",
            f"{int(missing.sum())} of {n} values are missing ({missing.mean():.1%}; "
            f"allowed: {allowed})",
            missing,
        )
    present = ~missing
    not_number = t.bad[:, j] | (present & ~np.isfinite(v))
    finite = present & ~not_number
    not_whole = finite & (v != np.round(v)) if f.type == "integer" else np.zeros(n, bool)
    if not_number.any() or not_whole.any():
        samples = [repr(s) for _, s in t.bad_text.get(j, [])[:_SHOW]]
        samples += [fmt_number(x) for x in v[present & ~np.isfinite(v)][: _SHOW - len(samples)]]
        msg = []
        if not_number.any():
            msg.append(
                f"{plural(int(not_number.sum()), 'value')} not a number ({', '.join(samples)})"
            )
        if not_whole.any():
            eg = ", ".join(fmt_number(x) for x in v[not_whole][:_SHOW])
            msg.append(f"{plural(int(not_whole.sum()), 'value')} not a whole number ({eg})")
        add(f"type:{f.name}", "; ".join(msg), not_number | not_whole)
    outside = finite & ((v < f.min) | (v > f.max))
    if outside.any():
        bad = v[outside]
        add(
            f"range:{f.name}",
            f"{plural(int(outside.sum()), 'value')} outside [{fmt_number(f.min)}, {fmt_number(f.max)}] "
            + (
                f"({fmt_number(bad.min())})"
                if bad.min() == bad.max()
                else f"(smallest {fmt_number(bad.min())}, largest {fmt_number(bad.max())})"
            ),
            outside,
        )
    if f.typical is not None and finite.any():
        med = float(np.median(v[finite]))
        lo, hi = f.typical
        if not lo <= med <= hi:
            out.append(
                Violation(
                    f"scale:{f.name}",
                    f"median {fmt_number(med)} is outside the typical interval "
                    f"[{fmt_number(lo)}, {fmt_number(hi)}]: a column in other units?",
                    t.where,
                    f.name,
                )
            )


# ----------------------------------------------------------------------------- images


def _check_pixel_table(t: RawTable, schema: DataSchema, out: list[Violation]) -> None:
    """An image CSV (one image per row: pixel columns and a label column)."""
    rule = schema.image
    assert rule is not None
    _table_layout(t, schema, out)
    pix = [j for j, h in enumerate(t.header) if h != schema.label.column]
    want = math.prod(rule.shape)
    if len(pix) != want:
        out.append(
            Violation(
                "image-shape",
                f"rows hold {len(pix)} pixel values, the schema expects "
                f"{'x'.join(map(str, rule.shape))} = {want}",
                t.where,
            )
        )
    else:
        vals = t.values[:, pix]
        broken = (t.missing[:, pix] | t.bad[:, pix]).any(axis=1)
        if broken.any():
            out.append(
                _located(
                    "pixel-type",
                    f"{plural(int(broken.sum()), 'image')} with empty or non-numeric pixel values",
                    t.where,
                    None,
                    broken,
                    t.rows,
                    t.lines,
                )
            )
        _check_pixels(vals, ~broken, rule, t.where, t.rows, t.lines, out)
    if t.labels is not None:
        _check_labels(t.labels, schema.label, t.where, t.rows, t.lines, out)


def _check_images(im: RawImages, schema: DataSchema, out: list[Violation]) -> None:
    rule = schema.image
    if schema.kind != "image" or rule is None:
        out.append(
            Violation("data-kind", "the data holds images, the schema describes a table", im.where)
        )
        return
    rows = np.arange(1, len(im.x) + 1, dtype=np.int64)
    if im.label_count is not None:
        out.append(
            Violation(
                "label-count",
                f"{im.label_count} labels for {len(im.x)} images",
                im.label_where or im.where,
            )
        )
    shape = tuple(int(d) for d in im.x.shape[1:])
    if shape != rule.shape:
        out.append(
            Violation(
                "image-shape",
                f"images are {'x'.join(map(str, shape))}, the schema expects "
                f"{'x'.join(map(str, rule.shape))}",
                im.where,
            )
        )
    odd = np.zeros(len(im.x), dtype=bool)
    if im.odd_shape_rows:
        odd[np.asarray(im.odd_shape_rows) - 1] = True
        out.append(
            _located(
                "image-shape",
                f"{plural(len(im.odd_shape_rows), 'image')} shaped unlike the rest",
                im.where,
                None,
                odd,
                rows,
                None,
                "image",
            )
        )
    flat = im.x.reshape(len(im.x), -1)
    _check_pixels(flat, ~odd, rule, im.where, rows, None, out, "image")
    n_lab = len(im.x) if im.label_count is None else min(len(im.x), im.label_count)
    _check_labels(
        im.labels[:n_lab],
        schema.label,
        im.label_where or im.where,
        rows[:n_lab],
        None,
        out,
        "image",
    )


def _check_pixels(
    flat: np.ndarray,
    use: np.ndarray,
    rule: ImageRule,
    where: str,
    rows: np.ndarray,
    lines: np.ndarray | None,
    out: list[Violation],
    unit: str = "row",
) -> None:
    if not len(flat):
        return
    if np.issubdtype(flat.dtype, np.integer):
        nonint = np.zeros(len(flat), dtype=bool)
        lo_px, hi_px = flat.min(axis=1), flat.max(axis=1)
    else:
        finite = np.isfinite(flat)
        nonint = use & (~finite.all(axis=1))
        if rule.integer_pixels:
            with np.errstate(invalid="ignore"):
                nonint |= use & (finite & (flat != np.round(flat))).any(axis=1)
        lo_px = np.where(finite, flat, np.inf).min(axis=1)
        hi_px = np.where(finite, flat, -np.inf).max(axis=1)
    if nonint.any():
        out.append(
            _located(
                "pixel-type",
                f"{plural(int(nonint.sum()), 'image')} with pixel values that are not "
                + ("whole numbers" if rule.integer_pixels else "finite numbers"),
                where,
                None,
                nonint,
                rows,
                lines,
                unit,
            )
        )
    outside = use & ((lo_px < rule.pixel_min) | (hi_px > rule.pixel_max))
    if outside.any():
        out.append(
            _located(
                "pixel-range",
                f"{plural(int(outside.sum()), 'image')} with pixels outside "
                f"[{fmt_number(rule.pixel_min)}, {fmt_number(rule.pixel_max)}] (smallest "
                f"{fmt_number(float(lo_px[outside].min()))}, largest {fmt_number(float(hi_px[outside].max()))})",
                where,
                None,
                outside,
                rows,
                lines,
                unit,
            )
        )
