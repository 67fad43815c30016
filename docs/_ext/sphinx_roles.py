"""Griffe extension for the API reference: Sphinx cross-reference roles as code spans.

fedpriv's numpy-style docstrings name other objects with Sphinx roles (``:class:`RunDir```,
``:func:`~fedpriv.keys.deal_keys```), which Markdown would print literally. Each role becomes an
inline code span of the name as Sphinx would show it (``~`` keeps the last component). Loaded by
mkdocstrings from mkdocs.yml; the docstrings themselves are left as they are.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2).strip()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def convert(text: str) -> str:
    """``text`` with every Sphinx cross-reference role replaced by a code span."""
    return _ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the roles in every docstring once the package is loaded."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
