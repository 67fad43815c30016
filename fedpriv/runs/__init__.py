"""One run's lifecycle, shared by simulation and deployment.

========================  =====================================================================
module                    holds
========================  =====================================================================
``folder``                :class:`RunDir` (the run folder's layout), :func:`default_run_dir`,
                          :func:`check_run_dir` (``--out`` checked before anything is written),
                          :func:`write_config`
``prepare``               :func:`prepare_run` (data, partitions, model, value range: every
                          check before a folder exists), :func:`deal_run_keys`
``keys``                  finding and loading key material (:func:`load_codec`,
                          :func:`key_dir_for`, :func:`server_params_path`)
``recorder``              :class:`RunRecorder`: what the server writes each round
``checkpoint``            :class:`Checkpoint`: the server's restart point
``evaluate``              :func:`evaluate_run`: a key holder decrypts and evaluates every round
``result``                :class:`RunResult` / :class:`RoundResult`: a finished run, typed
``flwr_config``           :class:`FlowerRunConfig`: the Flower run-config keys, typed
``flwr_cli``              :class:`FlwrCli`: the ``flwr`` CLI with a private ``FLWR_HOME``
``flwr_app``              the ServerApp side of a ``flwr run`` (settings, keys, outcome)
``interrupt``             Ctrl-C: a clean stop first, a hard exit on the second
``stoppable``             :class:`StoppableGrid`: a server that stops within 0.1 s of a Ctrl-C
========================  =====================================================================

:class:`RunDir` and :class:`FlowerRunConfig` are light (no Flower or torch import); the rest
loads on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpriv.runs.flwr_config import FlowerRunConfig
from fedpriv.runs.folder import RunDir, check_run_dir, default_run_dir, write_config

if TYPE_CHECKING:
    from fedpriv.runs.checkpoint import Checkpoint
    from fedpriv.runs.evaluate import evaluate_run
    from fedpriv.runs.flwr_cli import FlwrCli
    from fedpriv.runs.recorder import RunRecorder
    from fedpriv.runs.result import RoundResult, RunResult

__all__ = [
    "Checkpoint",
    "FlowerRunConfig",
    "FlwrCli",
    "RoundResult",
    "RunDir",
    "RunRecorder",
    "RunResult",
    "check_run_dir",
    "default_run_dir",
    "evaluate_run",
    "write_config",
]

_LAZY = {
    "Checkpoint": "fedpriv.runs.checkpoint",
    "FlwrCli": "fedpriv.runs.flwr_cli",
    "RoundResult": "fedpriv.runs.result",
    "RunRecorder": "fedpriv.runs.recorder",
    "RunResult": "fedpriv.runs.result",
    "evaluate_run": "fedpriv.runs.evaluate",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedpriv.runs' has no attribute {name!r}")
