"""Where the tests find the shared data: ``../shared/data`` next to the repository root, or the
folder ``$FEDPRIV_SHARED_DATA`` names. Never an absolute path of one machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "FEDPRIV_SHARED_DATA"


def shared_data_root() -> Path:
    """``$FEDPRIV_SHARED_DATA``, else ``<repository>/../shared/data``."""
    return Path(os.environ.get(ENV) or ROOT.parent / "shared" / "data")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def shared_data(*parts: str) -> Path:
    """A path under the shared data folder.

    Missing: the test is skipped on a developer machine, and fails under ``CI=true`` (CI has the
    data, so a test that cannot find it there would pass for the wrong reason).
    """
    path = shared_data_root().joinpath(*parts)
    if not path.exists():
        msg = f"shared data not found at {path} (set {ENV} to the shared data folder)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)
    return path
