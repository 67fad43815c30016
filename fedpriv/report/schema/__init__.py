"""The JSON Schema of the privacy report, shipped as package data."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

__all__ = ["SCHEMA_FILE", "load_schema"]

SCHEMA_FILE = "privacy_report.v1.json"


@functools.cache
def load_schema() -> dict[str, Any]:
    """The draft 2020-12 schema every report must satisfy."""
    text = resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc
