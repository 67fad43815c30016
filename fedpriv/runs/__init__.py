"""One run's lifecycle on disk: the run folder, the recorder the server writes through, checkpoints.

:class:`RunDir` is light (no Flower import) so the report and the CLI can read run folders;
the recorder and checkpoint load Flower's strategy types on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpriv.runs.folder import RunDir

if TYPE_CHECKING:
    from fedpriv.runs.checkpoint import Checkpoint
    from fedpriv.runs.recorder import RunRecorder

__all__ = ["Checkpoint", "RunDir", "RunRecorder"]

_LAZY = {"Checkpoint": "fedpriv.runs.checkpoint", "RunRecorder": "fedpriv.runs.recorder"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedpriv.runs' has no attribute {name!r}")
