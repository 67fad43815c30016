"""``fedpriv data schema infer`` and ``fedpriv data check``: the data owner's schema tools.

Exit codes: 0 the data matches; 2 bad arguments or an invalid schema file; 3 the data does not
match its schema or cannot be read (every violated check is named, with file, column and rows).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_data_parser"]

_SPEC_HELP = "dataset spec: digits, mnist:PATH, csv:PATH or hf:NAME"


def _labels(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    from fedpriv.errors import ConfigError

    values = tuple(v.strip() for v in text.split(","))
    if len(values) < 2 or any(not v for v in values) or len(set(values)) != len(values):
        raise ConfigError(f"--labels {text!r}: expected at least 2 distinct labels, e.g. 0,1,2")
    return values


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: must be a fraction in [0, 1]")
    return v


def _describe(schema: Any) -> list[str]:
    from fedpriv.data.schema.check import fmt_number

    lines = []
    for f in schema.features:
        typical = f"[{fmt_number(f.typical[0])}, {fmt_number(f.typical[1])}]" if f.typical else "-"
        missing = "none" if f.max_missing_fraction == 0 else f"<= {f.max_missing_fraction:.2%}"
        lines.append(
            f"  {f.name:<16} {f.type:<8} range [{fmt_number(f.min)}, {fmt_number(f.max)}]  "
            f"median in {typical}  missing {missing}"
        )
    if schema.image is not None:
        im = schema.image
        lines.append(
            f"  images {'x'.join(map(str, im.shape))}, pixels in [{fmt_number(im.pixel_min)}, "
            f"{fmt_number(im.pixel_max)}]" + (", whole numbers" if im.integer_pixels else "")
        )
    lab = schema.label
    values = ", ".join(lab.values) if len(lab.values) <= 12 else f"{len(lab.values)} labels"
    bal = []
    if lab.min_fraction is not None:
        bal.append(f">= {lab.min_fraction:.1%}")
    if lab.max_fraction is not None:
        bal.append(f"<= {lab.max_fraction:.1%}")
    lines.append(
        f"  label column {lab.column!r}: {values}; class shares "
        + (" and ".join(bal) if bal else "not bounded")
    )
    return lines


def cmd_schema_infer(args: argparse.Namespace) -> int:
    from fedpriv.data.schema import infer_schema
    from fedpriv.errors import ConfigError

    if args.out.exists() and not args.force:
        raise ConfigError(f"--out {args.out}: file exists (use --force to replace it)")
    schema = infer_schema(
        args.spec,
        label_column=args.label_column,
        labels=_labels(args.labels),
        margin=args.margin,
        min_class_fraction=args.min_class_fraction,
        max_class_fraction=args.max_class_fraction,
        allow_extra_columns=args.allow_extra_columns,
    )
    schema.save(args.out)
    what = (
        f"{len(schema.features)} features"
        if schema.kind == "tabular" or schema.image is None
        else f"{'x'.join(map(str, schema.image.shape))} images"
    )
    print(f"wrote {args.out}: {schema.kind} data ({what}, {len(schema.label.values)} labels)")
    for line in _describe(schema):
        print(line)
    print(f"check data against it: fedpriv data check SPEC --schema {args.out}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from fedpriv.data.schema import check_data, load_schema

    schema = load_schema(args.schema)
    report = check_data(args.spec, schema)
    report.raise_if_failed()  # DataCheckError: exit 3, every violated check named
    print(f"{args.spec}: {report.rows} rows match {args.schema}")
    return 0


def add_data_parser(sub: Any) -> None:
    """Register ``fedpriv data`` on the top-level subparsers."""
    d = sub.add_parser("data", help="data schemas: infer one from trusted data, check data")
    ds = d.add_subparsers(dest="data_command", required=True)
    s = ds.add_parser("schema", help="data schema files")
    ss = s.add_subparsers(dest="schema_command", required=True)
    inf = ss.add_parser(
        "infer", help="infer a schema (columns, types, ranges, label set...) from trusted data"
    )
    inf.add_argument("spec", help=_SPEC_HELP)
    inf.add_argument("--out", type=Path, required=True, help="schema file to write (JSON)")
    inf.add_argument("--label-column", default="label", help="the label column (default: label)")
    inf.add_argument(
        "--labels",
        default=None,
        metavar="A,B,...",
        help="declare the label set in class order instead of inferring it",
    )
    inf.add_argument(
        "--margin",
        type=float,
        default=0.1,
        help="widen each feature's observed range by this share of its span (default 0.1)",
    )
    inf.add_argument(
        "--min-class-fraction",
        type=_fraction,
        default=None,
        help="every class must make up at least this share of the rows",
    )
    inf.add_argument(
        "--max-class-fraction",
        type=_fraction,
        default=None,
        help="no class may make up more than this share of the rows",
    )
    inf.add_argument(
        "--allow-extra-columns",
        action="store_true",
        help="tolerate columns the schema does not name",
    )
    inf.add_argument("--force", action="store_true", help="replace an existing --out file")
    inf.set_defaults(func=cmd_schema_infer)
    c = ds.add_parser(
        "check", help="check data against a schema; exit 3 naming every violated check"
    )
    c.add_argument("spec", help=_SPEC_HELP)
    c.add_argument("--schema", type=Path, required=True, help="schema file (JSON)")
    c.set_defaults(func=cmd_check)
