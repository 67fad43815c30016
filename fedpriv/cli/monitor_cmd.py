"""``fedpriv monitor RUN_DIR``: serve the live, read-only run page on this machine."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["add_monitor_args", "add_monitor_parser", "monitor_alongside"]


def _server(root: Path, host: str, port: int) -> Any:
    from fedpriv.errors import ConfigError
    from fedpriv.monitor.server import MonitorServer

    try:
        return MonitorServer(root, host=host, port=port)
    except OSError as exc:
        raise ConfigError(f"monitor: cannot listen on {host}:{port} ({exc})") from None


def cmd_monitor(args: argparse.Namespace) -> int:
    srv = _server(args.run_dir, args.host, args.port)
    print(f"fedpriv monitor: {srv.url}  (watching {args.run_dir}; Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the Ctrl-C it handled
        srv.serve()
    print("monitor stopped", flush=True)
    return 0


@contextlib.contextmanager
def monitor_alongside(enabled: bool, root: Path, port: int = 0) -> Iterator[None]:
    """Serve the monitor for ``root`` while the body runs (``--monitor`` on other commands)."""
    if not enabled:
        yield
        return
    srv = _server(root, "127.0.0.1", port)
    url = srv.start()
    print(f"monitor: {url}  (watching {root}; stops with this command)", flush=True)
    try:
        yield
    finally:
        srv.stop()


def add_monitor_args(p: argparse.ArgumentParser, *, runs_dir: bool = False) -> None:
    """``--monitor`` and ``--monitor-port`` (and ``--monitor-dir`` for a folder of runs)."""
    p.add_argument(
        "--monitor",
        action="store_true",
        help="serve the live run page on 127.0.0.1 while this runs (prints the URL)",
    )
    p.add_argument(
        "--monitor-port", type=int, default=0, help="port of --monitor (default: a free port)"
    )
    if runs_dir:
        p.add_argument(
            "--monitor-dir",
            type=Path,
            default=Path("runs"),
            help="folder of run folders --monitor follows (default runs/, where `fedpriv run` "
            "writes; the newest run is shown)",
        )


def add_monitor_parser(sub: Any) -> None:
    """Register ``fedpriv monitor`` on the top-level subparsers."""
    m = sub.add_parser(
        "monitor",
        help="live web page of a run (read-only, 127.0.0.1): rounds, clients, epsilon, bytes",
    )
    m.add_argument(
        "run_dir",
        type=Path,
        help="a run folder, or a folder of runs (follows the newest); may not exist yet",
    )
    m.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: a free port)")
    m.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1: this machine only)",
    )
    m.set_defaults(func=cmd_monitor)
