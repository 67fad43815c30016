import subprocess

import pytest


def ray_processes() -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", "raylet|gcs_server|flower-superlink"], capture_output=True, text=True
    )
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


@pytest.fixture
def no_leftover_processes():
    """Fail a test that leaves Ray or a SuperLink running."""
    yield
    left = ray_processes()
    assert not left, f"processes left behind: {left}"
