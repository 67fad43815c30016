"""Command-line interface: ``fedpriv simulate | sweep | keys | server | client | run | report``.

``main`` loads on first use, so ``python -m fedpriv.cli.main`` runs without a double import.
"""

from __future__ import annotations

from typing import Any

__all__ = ["main"]


def __getattr__(name: str) -> Any:
    if name == "main":
        from fedpriv.cli.main import main

        return main
    raise AttributeError(f"module 'fedpriv.cli' has no attribute {name!r}")
