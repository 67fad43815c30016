"""fedpriv: private federated learning on Flower, with Opacus DP-SGD and homomorphic aggregation.

The top-level namespace is light: heavy parts (torch, Flower, TenSEAL) load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import (
    BudgetExhaustedError,
    ConfigError,
    CryptoError,
    DataError,
    FedprivError,
    RunFailedError,
    StateError,
    VerificationError,
    WireError,
)

__version__ = "0.1.0"

__all__ = [
    "BudgetExhaustedError",
    "ConfigError",
    "CryptoError",
    "DataError",
    "FedprivError",
    "RunConfig",
    "RunFailedError",
    "StateError",
    "VerificationError",
    "WireError",
    "__version__",
    "load_config",
    "simulate",
]

_LAZY = {"simulate": "fedpriv.simulation"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedpriv' has no attribute {name!r}")
