"""Fixtures for every test: a private FEDPRIV_HOME, the shared data folder, and a check that
a test leaves no Ray or Flower process behind."""

import logging
import os
import sys
import threading
import time
import traceback
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


# -- a watchdog for hung tests ---------------------------------------------------------------
# pytest-timeout prints every thread's full stack, and CI shows only the head and tail of a
# failure; this logs a short summary (project and Flower frames of every thread, the load, the
# busiest processes) shortly before the timeout, and logged records are printed in the
# "Captured log call" section near the end of the failure.
_WATCH_MARGIN_S = 45.0
_watch_log = logging.getLogger("tests.watchdog")


def _summary() -> str:
    lines = [f"load average {os.getloadavg()}"]
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        frames = [
            f"{Path(f.f_code.co_filename).name}:{n} {f.f_code.co_name}"
            for f, n in traceback.walk_stack(frame)
            if any(k in f.f_code.co_filename for k in ("/fedpriv/", "/tests/", "/flwr/"))
        ][:6]
        if frames:
            lines.append(f"thread {names.get(ident, ident)}: " + " <- ".join(frames))

    def ticks() -> dict[str, tuple[int, int, str]]:
        out = {}
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if cmd:  # not a kernel thread
                out[d.name] = (int(stat[11]) + int(stat[12]), int(stat[16]), cmd[:90])
        return out

    before = ticks()
    time.sleep(1.0)
    busy = [
        (t - before[pid][0], f"pid {pid} nice {nice} cpu {t - before[pid][0]}% {cmd}")
        for pid, (t, nice, cmd) in ticks().items()
        if pid in before
    ]
    lines += [f"busiest: {p}" for _, p in sorted(busy, reverse=True)[:6]]
    return "\n".join(lines)


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest):
    mark = request.node.get_closest_marker("timeout")
    given = request.config.getoption("timeout", None) or request.config.getini("timeout") or 0
    limit = float(mark.args[0]) if mark and mark.args else float(given)
    if limit <= _WATCH_MARGIN_S:
        yield
        return
    timer = threading.Timer(
        limit - _WATCH_MARGIN_S, lambda: _watch_log.error("still running:\n%s", _summary())
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
