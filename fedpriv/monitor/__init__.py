"""``fedpriv monitor``: a live, read-only web view of a run folder.

:mod:`fedpriv.monitor.state` reads the folder while it is written (standard library only);
:mod:`fedpriv.monitor.server` serves the page with Starlette and server-sent events and is
imported only when a monitor is started, never on a device's training path.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpriv.monitor.state import RunReader, find_run_dir

if TYPE_CHECKING:
    from fedpriv.monitor.server import MonitorServer, make_app

__all__ = ["MonitorServer", "RunReader", "find_run_dir", "make_app"]


def __getattr__(name: str) -> Any:
    if name in ("MonitorServer", "make_app"):
        return getattr(importlib.import_module("fedpriv.monitor.server"), name)
    raise AttributeError(f"module 'fedpriv.monitor' has no attribute {name!r}")
