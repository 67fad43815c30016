"""Model zoo for fedpriv (Opacus-compatible) and helpers to move weights around."""

from fedpriv.models.evaluate import evaluate
from fedpriv.models.params import (
    get_flat_params,
    load_weights,
    model_fingerprint,
    model_name,
    num_params,
    save_weights,
    set_flat_params,
)
from fedpriv.models.registry import DEFAULT_MODEL, FedprivNet, available_models, build_model

__all__ = [
    "DEFAULT_MODEL",
    "FedprivNet",
    "available_models",
    "build_model",
    "evaluate",
    "get_flat_params",
    "load_weights",
    "model_fingerprint",
    "model_name",
    "num_params",
    "save_weights",
    "set_flat_params",
]
