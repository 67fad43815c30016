"""Infer a data schema from reference data the data owner trusts.

Inference refuses reference data that is itself broken (non-numeric features, a label typo
among numbers, ragged rows...): a schema must never bless a bad export. The result is checked
against the same data before it is returned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedpriv.data.schema.check import check_parts
from fedpriv.data.schema.model import DataSchema, FeatureRule, ImageRule, LabelRule
from fedpriv.data.schema.raw import NA_TOKENS, RawImages, RawTable, Unreadable, read_raw
from fedpriv.errors import DataError

__all__ = ["infer_schema", "sorted_labels"]


def sorted_labels(values: Sequence[str], *, where: str = "labels") -> tuple[str, ...]:
    """Distinct labels in class order: numeric order when all are numbers, else text order.

    Raises
    ------
    DataError
        Numbers mixed with words (``"cat"`` among digits): almost always a typo. Declare the
        label set explicitly if the mix is intended.
    """
    uniq = sorted(set(values))
    keys = []
    words = []
    for v in uniq:
        try:
            keys.append(float(v))
        except ValueError:
            words.append(v)
    if words and keys:
        raise DataError(
            f"{where}: labels mix numbers and words ({', '.join(repr(w) for w in words[:5])} "
            "among numeric labels): a typo? Fix the data, or declare the label set explicitly "
            "(a data schema's label values; --labels when inferring one) if these are real classes"
        )
    if keys:
        return tuple(v for _, v in sorted(zip(keys, uniq, strict=True)))
    return tuple(uniq)


def _label_rule(
    text: np.ndarray,
    column: str,
    where: str,
    labels: Sequence[str] | None,
    balance: tuple[float | None, float | None],
) -> LabelRule:
    present = text[~np.isin(np.char.lower(text.astype(str)), list(NA_TOKENS))].astype(str)
    problems = []
    if len(present) < len(text):
        problems.append(f"{len(text) - len(present)} rows have no label")
    values: tuple[str, ...] = ()
    try:
        values = tuple(labels) if labels else sorted_labels(present.tolist(), where=where)
    except DataError as e:
        problems.append(str(e).removeprefix(f"{where}: "))
    if problems:
        raise DataError(f"{where}: " + "; ".join(problems))
    if len(values) < 2:
        raise DataError(f"{where}: column {column!r} has a single class; need at least 2")
    return LabelRule(column, values, balance[0], balance[1])


def _feature(t: RawTable, j: int, margin: float, problems: list[str]) -> FeatureRule | None:
    name = t.header[j]
    v, missing, bad = t.values[:, j], t.missing[:, j], t.bad[:, j]
    if bad.any() or (~missing & ~np.isfinite(v)).any():
        eg = ", ".join(repr(s) for _, s in t.bad_text.get(j, [])[:3]) or "inf"
        problems.append(
            f"column {name!r}: {int(bad.sum()) or int((~missing & ~np.isfinite(v)).sum())} "
            f"values are not finite numbers ({eg})"
        )
        return None
    ok = v[~missing]
    if not len(ok):
        problems.append(f"column {name!r}: every value is missing")
        return None
    lo, hi = float(ok.min()), float(ok.max())
    integer = bool(np.all(ok == np.round(ok)))
    span = hi - lo
    pad = margin * (span if span > 0 else max(abs(lo), 1.0))
    q_lo, q_hi = (float(q) for q in np.quantile(ok, [0.01, 0.99]))
    lo_w, hi_w = lo - pad, hi + pad
    if lo >= 0:  # a non-negative quantity stays non-negative
        lo_w = max(lo_w, 0.0)
    if integer:
        lo_w, hi_w = float(math.floor(lo_w)), float(math.ceil(hi_w))
    lo_w, hi_w = _round_out(lo_w, hi_w, span)
    # The median of a device's column must fall where the reference's central 98% lie: a
    # column exported in other units (m for cm, kg for g) moves it far out, a skewed
    # partition hardly ever does.
    t_lo, t_hi = _round_out(q_lo, q_hi, span)
    frac = float(missing.mean())
    return FeatureRule(
        name,
        "integer" if integer else "float",
        lo_w,
        hi_w,
        (max(lo_w, t_lo), min(hi_w, t_hi)),
        math.ceil(frac * 10_000) / 10_000,
    )


def _round_out(lo: float, hi: float, span: float) -> tuple[float, float]:
    """Round a bound pair outwards to 4 significant digits of the span (readable, no 0.1+0.2)."""
    scale = span if span > 0 else max(abs(lo), abs(hi), 1.0)
    step = 10.0 ** (math.floor(math.log10(scale)) - 3)
    return (
        float(round(math.floor(lo / step) * step, 12)),
        float(round(math.ceil(hi / step) * step, 12)),
    )


def infer_schema(
    spec: str,
    *,
    label_column: str = "label",
    labels: Sequence[str] | None = None,
    margin: float = 0.1,
    min_class_fraction: float | None = None,
    max_class_fraction: float | None = None,
    allow_extra_columns: bool = False,
) -> DataSchema:
    """Infer a schema from ``spec`` (``digits``, ``mnist:PATH``, ``csv:PATH``, ``hf:NAME``).

    Parameters
    ----------
    label_column : str
        The label column (tables and image CSVs).
    labels : sequence of str, optional
        Declare the label set (in class order) instead of inferring it.
    margin : float
        Widen each feature's observed range by this share of its span on both sides (other
        devices' data varies a little); the lower bound of a non-negative feature stays >= 0.
        Image pixel ranges are taken as observed.
    min_class_fraction, max_class_fraction : float, optional
        Class-balance bounds to enforce (none by default).
    allow_extra_columns : bool
        Tolerate columns the schema does not name.

    Raises
    ------
    DataError
        The reference data cannot be read, or is itself inconsistent (every problem listed).
    """
    if not margin >= 0:
        raise DataError(f"--margin must be >= 0, got {margin}")
    try:
        parts = read_raw(spec, label_column=label_column)
    except Unreadable as e:
        raise DataError(f"cannot infer a schema: {e}") from None
    first = parts[0]
    balance = (min_class_fraction, max_class_fraction)
    kind, _, arg = spec.partition(":")
    source = f"{kind}:{Path(arg).name}" if arg else kind
    if isinstance(first, RawImages) or kind == "mnist":
        schema = _infer_images(parts, label_column, labels, balance, source)
    else:
        assert isinstance(first, RawTable)
        schema = _infer_table(first, label_column, labels, balance, margin, source)
        schema = DataSchema(
            "tabular",
            schema.label,
            schema.features,
            allow_extra_columns=allow_extra_columns,
            source=source,
        )
    report = check_parts(spec, parts, schema)
    if not report.ok:
        raise DataError(
            "the reference data does not satisfy the schema inferred from it (fix the data "
            "or the options):\n" + report.format()
        )
    return schema


def _infer_table(
    t: RawTable,
    label_column: str,
    labels: Sequence[str] | None,
    balance: tuple[float | None, float | None],
    margin: float,
    source: str,
) -> DataSchema:
    problems: list[str] = []
    if t.labels is None:
        raise DataError(
            f"{t.where}: no label column {label_column!r} (columns: {', '.join(t.header)}); "
            "pass --label-column"
        )
    if t.ragged:
        r, line, w = t.ragged[0]
        problems.append(
            f"{len(t.ragged)} rows do not have {len(t.header)} fields (first: row {r}, "
            f"line {line}, {w} fields)"
        )
    if not len(t.rows):
        raise DataError(f"{t.where}: no data rows")
    feats = []
    for j, h in enumerate(t.header):
        if h == label_column:
            continue
        f = _feature(t, j, margin, problems)
        if f is not None:
            feats.append(f)
    if not feats and not problems:
        problems.append(f"no feature columns besides {label_column!r}")
    try:
        label = _label_rule(t.labels, label_column, t.where, labels, balance)
    except DataError as e:
        problems.append(str(e).removeprefix(f"{t.where}: "))
        label = LabelRule(label_column, ("?", "??"))
    if problems:
        raise DataError(
            f"{t.where}: cannot infer a schema from this data:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return DataSchema("tabular", label, tuple(feats), source=source)


def _infer_images(
    parts: Sequence[RawImages | RawTable],
    label_column: str,
    labels: Sequence[str] | None,
    balance: tuple[float | None, float | None],
    source: str,
) -> DataSchema:
    first = parts[0]
    if isinstance(first, RawTable):  # an image CSV: square images, one channel
        if first.labels is None:
            raise DataError(f"{first.where}: no label column {label_column!r}")
        pix = [j for j, h in enumerate(first.header) if h != label_column]
        side = math.isqrt(len(pix))
        if side * side != len(pix):
            raise DataError(
                f"{first.where}: {len(pix)} pixel columns are not a square image; "
                "cannot infer the image shape"
            )
        if first.ragged or first.bad[:, pix].any() or first.missing[:, pix].any():
            raise DataError(f"{first.where}: rows with missing, non-numeric or extra pixels")
        x = first.values[:, pix].reshape(-1, 1, side, side)
        text = first.labels
    else:
        x, text = first.x, first.labels
    if not len(x):
        raise DataError(f"{first.where}: no images")
    finite = x[np.isfinite(x)] if not np.issubdtype(x.dtype, np.integer) else x
    # Stored bytes (IDX, PNG): the format's range; other sources: the range observed.
    lo, hi = (0.0, 255.0) if x.dtype == np.uint8 else (float(finite.min()), float(finite.max()))
    integer = bool(np.issubdtype(x.dtype, np.integer) or np.all(finite == np.round(finite)))
    c, h, w = (int(d) for d in x.shape[1:])
    label = _label_rule(text, label_column, first.where, labels, balance)
    return DataSchema(
        "image",
        label,
        image=ImageRule((c, h, w), lo, hi, integer),
        source=source,
    )
