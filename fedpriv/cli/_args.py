"""Argument groups shared by several ``fedpriv`` subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_config_args"]


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config TOML`` and repeatable ``--set KEY=VALUE`` (see fedpriv.config.load_config)."""
    p.add_argument(
        "--config", type=Path, default=None, help="experiment TOML (default: built-in default run)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set rounds=3 (repeatable)",
    )
