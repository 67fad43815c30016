"""The report's fourteen numbered sections, in order, and its summary.

Each module holds a group of sections: for each, the builder of its JSON (from
:class:`~fedpriv.report.facts.RunFacts`) and the renderer of its HTML (from the signed report).

=================  ==========================================================
module             sections (JSON key)
=================  ==========================================================
``identity``       1 ``identification``, 2 ``roles``
``data``           3 ``data_locations``, 4 ``egress`` (and the page's appendix)
``encryption``     5 ``encryption`` (security level, key custody, collusion)
``mechanism``      6 ``privacy_unit``, 7 ``mechanism``
``accounting``     8 ``accounting`` (with client-level DP), 9 ``budget_policy``
``outcomes``       10 ``releases_not_covered``, 11 ``utility``, 12 ``audit``
``retention``      13 ``retention``, 14 ``sign_off``
``summary``        ``summary``: built last from the others, shown first
=================  ==========================================================

Sections are built in this order and a builder may read the sections before it (the budget
reads the accounting); the summary reads them all.
"""

from __future__ import annotations

from fedpriv.report.sections import (
    accounting,
    data,
    encryption,
    identity,
    mechanism,
    outcomes,
    retention,
)
from fedpriv.report.sections.base import Section

__all__ = ["SECTIONS", "Section"]

SECTIONS: tuple[Section, ...] = (
    *identity.SECTIONS,
    *data.SECTIONS,
    *encryption.SECTIONS,
    *mechanism.SECTIONS,
    *accounting.SECTIONS,
    *outcomes.SECTIONS,
    *retention.SECTIONS,
)
