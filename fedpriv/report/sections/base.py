"""What a report section is: its JSON key, its heading, how it is built and how it is drawn."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fedpriv.report.facts import RunFacts

__all__ = ["Builder", "Renderer", "Section"]

Builder = Callable[[RunFacts, Mapping[str, Any]], Any]
"""``(facts, sections built so far) -> the section's JSON value``."""
Renderer = Callable[[Mapping[str, Any]], str]
"""``(the whole signed report) -> the section's HTML`` (escaped; numbers tied with ``num``)."""


@dataclass(frozen=True)
class Section:
    """One numbered section of the report, in the JSON and on the page."""

    key: str
    """Its key in ``privacy_report.json`` (and in the JSON Schema)."""
    title: str
    """Its heading on the page (numbered by its place in the report)."""
    anchor: str
    """Its HTML id is ``s-<anchor>``."""
    build: Builder | None
    """None only for the sign-off, which the assembler writes when it signs."""
    render: Renderer
