"""Model weights as flat float32 vectors (what gets clipped, encrypted and aggregated) and as
safetensors files (what gets checkpointed).

The flat layout is the concatenation of ``model.state_dict()`` tensors in their order. These
models have no buffers, so this is exactly the trainable parameters. Opacus and
``torch.compile`` wrappers are looked through, so a wrapped client model and a bare server
model produce the same vector, fingerprint and file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedpriv.errors import DataError, WireError

__all__ = [
    "get_flat_params",
    "load_weights",
    "model_fingerprint",
    "model_name",
    "num_params",
    "save_weights",
    "set_flat_params",
]

_FORMAT = "fedpriv"


def _unwrap(model: nn.Module) -> nn.Module:
    """Strip Opacus ``GradSampleModule`` (``_module``) and ``torch.compile`` (``_orig_mod``)."""
    while True:
        inner = getattr(model, "_module", None)
        if not isinstance(inner, nn.Module):
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(_unwrap(model).state_dict())


def model_name(model: nn.Module) -> str:
    """Architecture name given to :func:`build_model`, else the class name."""
    inner = _unwrap(model)
    arch = getattr(inner, "arch", None)
    return arch if isinstance(arch, str) else type(inner).__name__


def num_params(model: nn.Module) -> int:
    """Length of the flat vector of :func:`get_flat_params`."""
    return sum(t.numel() for t in _state(model).values())


def get_flat_params(model: nn.Module) -> np.ndarray:
    """All ``state_dict`` tensors, flattened and concatenated in order, as float32 numpy."""
    parts = [t.detach().to("cpu", torch.float32).reshape(-1) for t in _state(model).values()]
    if not parts:
        return np.zeros(0, dtype=np.float32)
    return torch.cat(parts).numpy().astype(np.float32, copy=True)


def set_flat_params(model: nn.Module, vec: np.ndarray) -> None:
    """Load a flat vector produced by :func:`get_flat_params` (or by aggregation) into ``model``.

    Raises
    ------
    WireError
        The vector is not 1-D, has the wrong length, or holds NaN/inf. It usually comes from
        another party or from decryption, so it is checked before touching the model.
    """
    arr = np.asarray(vec)
    state = _state(model)
    expected = sum(t.numel() for t in state.values())
    if arr.ndim != 1 or arr.shape[0] != expected:
        raise WireError(
            f"parameter vector has shape {arr.shape}, model {model_name(model)!r} needs "
            f"({expected},)"
        )
    if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
        raise WireError(f"parameter vector has dtype {arr.dtype}, expected floats")
    if not np.isfinite(arr).all():
        raise WireError(f"parameter vector holds {int((~np.isfinite(arr)).sum())} NaN/inf values")
    flat = torch.from_numpy(arr.astype(np.float32, copy=True))
    new: dict[str, torch.Tensor] = {}
    offset = 0
    for key, t in state.items():
        n = t.numel()
        new[key] = flat[offset : offset + n].view(t.shape).to(device=t.device, dtype=t.dtype)
        offset += n
    _unwrap(model).load_state_dict(new, strict=True)


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 hex digest of the architecture name and every tensor's name, shape and dtype.

    Two parties with equal fingerprints agree on the flat parameter layout; weights do not
    enter it.
    """
    spec = {
        "arch": model_name(model),
        "tensors": [[k, list(t.shape), str(t.dtype)] for k, t in _state(model).items()],
    }
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Write the model's ``state_dict`` to a safetensors file (atomically: temp file + rename).

    Metadata: ``{"format": "fedpriv", "model": <name>, "fingerprint": <model_fingerprint>}``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: t.detach().to("cpu").contiguous().clone() for k, t in _state(model).items()}
    metadata = {
        "format": _FORMAT,
        "model": model_name(model),
        "fingerprint": model_fingerprint(model),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights written by :func:`save_weights` into ``model``, after checking them.

    Raises
    ------
    DataError
        Unreadable or non-fedpriv file, another architecture, a missing/extra tensor, a shape
        mismatch (naming the tensor), or non-finite values. The model is unchanged then.
    """
    from safetensors import safe_open

    path = Path(path)
    state = _state(model)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            loaded = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    except FileNotFoundError as e:
        raise DataError(f"{path}: weights file not found") from e
    except Exception as e:  # SafetensorError (corrupt header/data) is not an OSError
        raise DataError(f"{path}: not a readable safetensors file ({e})") from e
    if meta.get("format") != _FORMAT:
        raise DataError(f"{path}: metadata 'format' is {meta.get('format')!r}, expected 'fedpriv'")
    if meta.get("model") != model_name(model):
        raise DataError(
            f"{path}: holds weights of model {meta.get('model')!r}, "
            f"but the model is {model_name(model)!r}"
        )
    missing = [k for k in state if k not in loaded]
    extra = [k for k in loaded if k not in state]
    if missing or extra:
        raise DataError(f"{path}: tensors do not match the model: missing {missing}, extra {extra}")
    for k, t in state.items():
        if tuple(loaded[k].shape) != tuple(t.shape):
            raise DataError(
                f"{path}: tensor {k!r} has shape {tuple(loaded[k].shape)}, "
                f"the model expects {tuple(t.shape)}"
            )
        if not loaded[k].is_floating_point() or not torch.isfinite(loaded[k]).all():
            raise DataError(f"{path}: tensor {k!r} is not a finite floating-point tensor")
    _unwrap(model).load_state_dict(
        {k: v.to(device=state[k].device, dtype=state[k].dtype) for k, v in loaded.items()},
        strict=True,
    )
