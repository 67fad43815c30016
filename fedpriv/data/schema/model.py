"""The data schema a data owner controls: a frozen dataclass and its versioned JSON file.

The file (``schema.json``) is validated on load against ``data_schema.v1.json`` (JSON Schema)
and then for rules a JSON Schema cannot express (``min <= max``, a feature named like the label
column...). Every problem is reported at once as a :class:`~fedpriv.errors.ConfigError`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fedpriv.errors import ConfigError

__all__ = [
    "SCHEMA_FORMAT",
    "SCHEMA_VERSION",
    "DataSchema",
    "FeatureRule",
    "ImageRule",
    "LabelRule",
    "load_schema",
    "schema_from_dict",
    "schema_to_dict",
]

SCHEMA_FORMAT = "fedpriv-data-schema"
SCHEMA_VERSION = 1
_SCHEMA_FILE = "data_schema.v1.json"


@dataclass(frozen=True)
class LabelRule:
    """The label column and the label set (in class order), with optional class-balance bounds."""

    column: str
    values: tuple[str, ...]
    min_fraction: float | None = None
    """Every class of the label set must make up at least this share of the rows."""
    max_fraction: float | None = None
    """No class may make up more than this share of the rows."""


@dataclass(frozen=True)
class FeatureRule:
    """One numeric feature column of tabular data."""

    name: str
    type: Literal["integer", "float"]
    min: float
    max: float
    typical: tuple[float, float] | None = None
    """The column's median must lie in this interval: a column exported in other units moves it."""
    max_missing_fraction: float = 0.0


@dataclass(frozen=True)
class ImageRule:
    """Shape and pixel values of one image, as stored (before any scaling)."""

    shape: tuple[int, int, int]
    pixel_min: float
    pixel_max: float
    integer_pixels: bool


@dataclass(frozen=True)
class DataSchema:
    """What one data owner's training data must look like.

    Attributes
    ----------
    kind : {"tabular", "image"}
        Tabular data has ``features``; image data has ``image``.
    label : LabelRule
        Label column and label set; a label outside the set is an error, never a new class.
    features : tuple of FeatureRule
        Tabular only: the expected columns besides the label, in any order.
    allow_extra_columns : bool
        Tabular only: whether columns the schema does not name are tolerated.
    image : ImageRule or None
        Image only.
    min_rows : int
        Fewer rows (an empty export) fail the ``not-empty`` check.
    source : str
        What the schema was inferred from (informational).
    """

    kind: Literal["tabular", "image"]
    label: LabelRule
    features: tuple[FeatureRule, ...] = ()
    allow_extra_columns: bool = False
    image: ImageRule | None = None
    min_rows: int = 1
    source: str = ""

    def digest(self) -> str:
        """SHA-256 of the canonical JSON form (identifies the schema in caches)."""
        blob = json.dumps(schema_to_dict(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()

    def save(self, path: Path) -> None:
        """Write the schema as indented JSON (atomically)."""
        from fedpriv.fileio import atomic_write_text

        text = json.dumps(schema_to_dict(self), indent=2) + "\n"
        atomic_write_text(Path(path), text, mode=0o644)


def schema_to_dict(s: DataSchema) -> dict[str, Any]:
    """The JSON form (``version`` 1)."""
    label: dict[str, Any] = {"column": s.label.column, "values": list(s.label.values)}
    label["min_fraction"] = s.label.min_fraction
    label["max_fraction"] = s.label.max_fraction
    return {
        "format": SCHEMA_FORMAT,
        "version": SCHEMA_VERSION,
        "kind": s.kind,
        "source": s.source,
        "label": label,
        "features": [
            {
                "name": f.name,
                "type": f.type,
                "min": f.min,
                "max": f.max,
                "typical": list(f.typical) if f.typical is not None else None,
                "max_missing_fraction": f.max_missing_fraction,
            }
            for f in s.features
        ],
        "allow_extra_columns": s.allow_extra_columns,
        "image": None
        if s.image is None
        else {
            "shape": list(s.image.shape),
            "pixel_min": s.image.pixel_min,
            "pixel_max": s.image.pixel_max,
            "integer_pixels": s.image.integer_pixels,
        },
        "min_rows": s.min_rows,
    }


@functools.cache
def _json_schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath(_SCHEMA_FILE).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


def schema_from_dict(doc: Any, *, where: str = "data schema") -> DataSchema:
    """Validate a parsed schema document and build the :class:`DataSchema`.

    Raises
    ------
    ConfigError
        Listing every problem: JSON Schema violations first, then semantic rules.
    """
    import jsonschema

    if isinstance(doc, dict) and doc.get("format") == SCHEMA_FORMAT:
        v = doc.get("version")
        if isinstance(v, int) and v != SCHEMA_VERSION:
            raise ConfigError(
                f"{where}: schema version {v} is not supported by this fedpriv "
                f"(it reads version {SCHEMA_VERSION})"
            )
    validator = jsonschema.Draft202012Validator(_json_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(
            [
                f"{where}: {'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}"
                for e in errors
            ]
        )
    lab = doc["label"]
    label = LabelRule(
        str(lab["column"]),
        tuple(str(v) for v in lab["values"]),
        lab.get("min_fraction"),
        lab.get("max_fraction"),
    )
    features = tuple(
        FeatureRule(
            str(f["name"]),
            f["type"],
            float(f["min"]),
            float(f["max"]),
            (float(f["typical"][0]), float(f["typical"][1])) if f.get("typical") else None,
            float(f["max_missing_fraction"]),
        )
        for f in doc["features"]
    )
    img = doc["image"]
    image = None
    if img is not None:
        c, h, w = (int(d) for d in img["shape"])
        image = ImageRule(
            (c, h, w), float(img["pixel_min"]), float(img["pixel_max"]), bool(img["integer_pixels"])
        )
    s = DataSchema(
        kind=doc["kind"],
        label=label,
        features=features,
        allow_extra_columns=bool(doc["allow_extra_columns"]),
        image=image,
        min_rows=int(doc["min_rows"]),
        source=str(doc.get("source", "")),
    )
    problems = _semantic_problems(s)
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems])
    return s


def _semantic_problems(s: DataSchema) -> list[str]:
    e: list[str] = []
    if s.kind == "tabular":
        if not s.features:
            e.append("tabular data needs at least one feature")
        if s.image is not None:
            e.append("image: must be null for tabular data")
    else:
        if s.image is None:
            e.append("image: image data needs an image rule (shape, pixel range)")
        if s.features:
            e.append("features: must be empty for image data (pixels are checked by 'image')")
    names = [f.name for f in s.features]
    for n in sorted({n for n in names if names.count(n) > 1}):
        e.append(f"features: {n!r} is listed more than once")
    if s.label.column in names:
        e.append(f"features: {s.label.column!r} is the label column")
    for f in s.features:
        if not (math.isfinite(f.min) and math.isfinite(f.max)) or f.min > f.max:
            e.append(f"features/{f.name}: need finite min <= max, got [{f.min}, {f.max}]")
        if f.typical is not None and f.typical[0] > f.typical[1]:
            e.append(f"features/{f.name}: typical interval {list(f.typical)} is reversed")
    if s.image is not None and s.image.pixel_min > s.image.pixel_max:
        e.append(f"image: pixel_min {s.image.pixel_min} > pixel_max {s.image.pixel_max}")
    lo, hi = s.label.min_fraction, s.label.max_fraction
    if lo is not None and hi is not None and lo > hi:
        e.append(f"label: min_fraction {lo} > max_fraction {hi}")
    if lo is not None and lo * len(s.label.values) > 1 + 1e-12:
        e.append(f"label: min_fraction {lo} x {len(s.label.values)} classes exceeds 1")
    return e


def load_schema(path: str | Path) -> DataSchema:
    """Read and validate a schema file.

    Raises
    ------
    ConfigError
        Missing or unreadable file, invalid JSON, or an invalid schema (every problem listed).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"data schema {p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"data schema {p}: cannot read ({exc})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"data schema {p}: not valid JSON ({exc})") from None
    return schema_from_dict(doc, where=f"data schema {p}")
