"""fedpriv: private federated learning on Flower, with Opacus DP-SGD and homomorphic aggregation.

From a notebook::

    import fedpriv

    cfg = fedpriv.load_config().replace(rounds=3, privacy={"target_epsilon": 3})
    result = fedpriv.simulate(cfg)          # -> RunResult: rounds, epsilon per client, paths
    fedpriv.verify(result.run_dir).ok       # the signed privacy report, checked

The top-level namespace is light: heavy parts (torch, Flower, TenSEAL) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import (
    BudgetExhaustedError,
    ConfigError,
    CryptoError,
    DataError,
    FedprivError,
    RunFailedError,
    RunInterrupted,
    StateError,
    VerificationError,
    WireError,
)

if TYPE_CHECKING:
    from fedpriv.report.verify import VerifyResult
    from fedpriv.runs.evaluate import evaluate_run as evaluate
    from fedpriv.runs.result import RoundResult, RunResult
    from fedpriv.simulation import simulate

__version__ = "0.1.0"

__all__ = [
    "BudgetExhaustedError",
    "ConfigError",
    "CryptoError",
    "DataError",
    "FedprivError",
    "RoundResult",
    "RunConfig",
    "RunFailedError",
    "RunInterrupted",
    "RunResult",
    "StateError",
    "VerificationError",
    "VerifyResult",
    "WireError",
    "__version__",
    "evaluate",
    "load_config",
    "simulate",
    "verify",
]

# name -> (module, attribute)
_LAZY = {
    "simulate": ("fedpriv.simulation", "simulate"),
    "evaluate": ("fedpriv.runs.evaluate", "evaluate_run"),
    "RunResult": ("fedpriv.runs.result", "RunResult"),
    "RoundResult": ("fedpriv.runs.result", "RoundResult"),
    "VerifyResult": ("fedpriv.report.verify", "VerifyResult"),
}


def verify(run_dir: Any, **options: Any) -> VerifyResult:
    """Verify a run's signed privacy report (signature, hash chains, epsilon recomputed...).

    ``options`` are those of :class:`fedpriv.report.VerifyOptions` (``trusted_keys``,
    ``allow_unknown_key``, ``trust_local_keys``). The result's ``ok`` is True only when every
    check passed; ``checks`` names each one.
    """
    from pathlib import Path

    from fedpriv.report import VerifyOptions, verify_run

    return verify_run(Path(run_dir), VerifyOptions(**options))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'fedpriv' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
