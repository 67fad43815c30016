"""Command-line interface: ``fedpriv simulate | keys | report``."""

from fedpriv.cli.main import main

__all__ = ["main"]
