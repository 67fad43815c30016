"""The project's own files agree with the code: Flower app config, uv overrides, Makefile."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from fedpriv.runs import FlowerRunConfig

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0]


def test_flwr_app_config_keys_are_fedprivs_with_the_same_defaults() -> None:
    """`flwr run --run-config` refuses keys the table does not declare: declare them all."""
    table = PYPROJECT["tool"]["flwr"]["app"]["config"]
    assert table == FlowerRunConfig().to_mapping()
    FlowerRunConfig.from_mapping(table)  # and they type-check


def test_uv_is_told_there_is_nothing_to_install() -> None:
    """`flwr run .` would otherwise install every requirement into a fresh environment per run."""
    project = PYPROJECT["project"]
    required = {_name(r) for r in project["dependencies"]}
    required |= {_name(r) for extra in project["optional-dependencies"].values() for r in extra}
    overrides = PYPROJECT["tool"]["uv"]["override-dependencies"]
    assert {_name(o) for o in overrides} == required
    assert all(o.endswith("; sys_platform == 'never'") for o in overrides)


def test_dev_extra_has_the_notebook_runner() -> None:
    dev = {_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert {"nbclient", "nbformat", "ipykernel"} <= dev
