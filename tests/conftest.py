"""Fixtures for every test: a private FEDPRIV_HOME, the shared data folder, and a check that
a test leaves no Ray or Flower process behind."""

import os
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def _private_fedpriv_home(tmp_path_factory: pytest.TempPathFactory):
    """Run signing keys and other per-user state go to a temporary FEDPRIV_HOME, not ~/.fedpriv."""
    old = os.environ.get("FEDPRIV_HOME")
    os.environ["FEDPRIV_HOME"] = str(tmp_path_factory.mktemp("fedpriv-home"))
    yield
    if old is None:
        os.environ.pop("FEDPRIV_HOME", None)
    else:
        os.environ["FEDPRIV_HOME"] = old


_PATTERNS = (
    "raylet",
    "gcs_server",
    "flower-superlink",
    "flower-supernode",
    "flower-superexec",
    "fedpriv.deploy.superlink_socket",  # fedpriv's SuperLink on a unix socket
    "flwr-simulation",
    "ray::",
)


def processes_with_mark(mark: str) -> list[str]:
    """Ray / Flower processes whose environment carries ``mark`` (i.e. started by this test)."""
    found = []
    needle = f"FEDPRIV_TEST_MARK={mark}".encode()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if not any(p in cmd for p in _PATTERNS):
                continue
            if needle in (d / "environ").read_bytes():
                found.append(f"{d.name} {cmd[:200]}")
        except OSError:
            continue
    return found


@pytest.fixture
def no_leftover_processes():
    """Fail a test that leaves Ray or a SuperLink running.

    Every process started during the test inherits a unique environment marker (detached
    daemons included), so processes of other concurrent work are never blamed.
    """
    mark = uuid.uuid4().hex
    old = os.environ.get("FEDPRIV_TEST_MARK")
    os.environ["FEDPRIV_TEST_MARK"] = mark
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FEDPRIV_TEST_MARK", None)
        else:
            os.environ["FEDPRIV_TEST_MARK"] = old
    # Ray and Flower daemons take a moment to exit after a clean shutdown.
    deadline = time.monotonic() + 15
    while (left := processes_with_mark(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes left behind: {left}"
