"""Codecs for the Flower messages fedpriv exchanges: one builder and one validating parser each.

Nothing here unpickles: ciphertext travels as a 1-D uint8 array in an ``ArrayRecord``
(Flower loads arrays with ``allow_pickle=False``), and every field a peer sent is type- and
range-checked before use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedpriv.errors import WireError

__all__ = [
    "TRAIN_METRICS",
    "EvalReply",
    "Instruction",
    "TrainReply",
    "blob_from_record",
    "blob_to_record",
    "build_eval_reply",
    "build_instruction",
    "build_train_reply",
    "metrics_digest",
    "parse_eval_reply",
    "parse_instruction",
    "parse_train_reply",
]

MAX_CONFIG_CHARS = 1 << 16


def blob_to_record(blob: bytes) -> ArrayRecord:
    return ArrayRecord({"blob": Array(np.frombuffer(blob, dtype=np.uint8).copy())})


def blob_from_record(rec: ArrayRecord, *, max_bytes: int) -> bytes:
    if list(rec.keys()) != ["blob"]:
        raise WireError(f"expected one array named 'blob', got {sorted(rec.keys())}")
    arr = rec["blob"]
    if arr.dtype != "<u1" and arr.dtype != "|u1" and arr.dtype != "uint8":
        raise WireError(f"blob must be uint8, got dtype {arr.dtype!r}")
    if len(arr.shape) != 1:
        raise WireError(f"blob must be 1-D, got shape {arr.shape}")
    if arr.shape[0] > max_bytes:
        raise WireError(f"blob of {arr.shape[0]} bytes exceeds the limit of {max_bytes}")
    data = arr.numpy()
    if data.dtype != np.uint8 or data.ndim != 1:
        raise WireError("blob content does not match its declared dtype/shape")
    return data.tobytes()


# ----------------------------------------------------------------------------- instruction


@dataclass(frozen=True)
class Instruction:
    """Server -> client: train or evaluate on this global model."""

    server_round: int
    config_json: str
    params_fingerprint: str
    global_blob: bytes | None
    """None in round 1: every client builds the same initial model from the run's seed."""
    run_id: str = ""
    """Random per run; clients sign it with each update so updates cannot be replayed."""


def build_instruction(ins: Instruction) -> RecordDict:
    rd = RecordDict(
        {
            "config": ConfigRecord(
                {
                    "server-round": ins.server_round,
                    "fedpriv-config": ins.config_json,
                    "params-fingerprint": ins.params_fingerprint,
                    "run-id": ins.run_id,
                }
            )
        }
    )
    if ins.global_blob is not None:
        rd["global"] = blob_to_record(ins.global_blob)
    return rd


def _get(rec: Any, key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in rec:
        raise WireError(f"{where}: missing field {key!r}")
    val = rec[key]
    if not isinstance(val, typ) or (isinstance(val, bool) and typ is not bool):
        raise WireError(f"{where}: field {key!r} has type {type(val).__name__}")
    return val


def parse_instruction(content: RecordDict, *, max_blob_bytes: int) -> Instruction:
    if "config" not in content.config_records:
        raise WireError("instruction: missing config record")
    cfg = content.config_records["config"]
    rnd = _get(cfg, "server-round", int, "instruction")
    text = _get(cfg, "fedpriv-config", str, "instruction")
    fp = _get(cfg, "params-fingerprint", str, "instruction")
    run_id = _get(cfg, "run-id", str, "instruction")
    if not 0 < len(run_id) <= 128:
        raise WireError("instruction: run-id must be 1..128 characters")
    if rnd < 1:
        raise WireError(f"instruction: server-round must be >= 1, got {rnd}")
    if len(text) > MAX_CONFIG_CHARS:
        raise WireError("instruction: config too large")
    blob = None
    if "global" in content.array_records:
        blob = blob_from_record(content.array_records["global"], max_bytes=max_blob_bytes)
    return Instruction(rnd, text, fp, blob, run_id)


# ----------------------------------------------------------------------------- train reply

_INT_METRICS = (
    "num-examples",
    "steps",
    "clipped",
    "weight-used",
    "refused",
    "update-bytes",
    "update-clipped",
)
_FLOAT_METRICS = (
    "epsilon",
    "noise-multiplier",
    "sample-rate",
    "train-loss",
    "train-seconds",
    "encrypt-seconds",
    "client-epsilon",
)
TRAIN_METRICS = (*_INT_METRICS, *_FLOAT_METRICS)
"""Every metric a train reply carries (a refusal sends them all, zero where not applicable)."""


def metrics_digest(metrics: dict[str, float | int]) -> str:
    """SHA-256 over the canonical form of the train metrics (signed along with the update)."""
    canon: dict[str, float | int] = {k: int(metrics[k]) for k in _INT_METRICS if k in metrics}
    canon.update({k: float(metrics[k]) for k in _FLOAT_METRICS if k in metrics})
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TrainReply:
    metrics: dict[str, float | int]
    blob: bytes | None
    refusal: str
    update_sha256: str
    history_json: str
    client_id: str
    signature: bytes = b""


def build_train_reply(r: TrainReply) -> RecordDict:
    rd = RecordDict(
        {
            "metrics": MetricRecord(dict(r.metrics)),
            "info": ConfigRecord(
                {
                    "refusal": r.refusal,
                    "update-sha256": r.update_sha256,
                    "history": r.history_json,
                    "client-id": r.client_id,
                    "signature": r.signature,
                }
            ),
        }
    )
    if r.blob is not None:
        rd["update"] = blob_to_record(r.blob)
    return rd


def parse_train_reply(msg: Message, *, max_blob_bytes: int) -> TrainReply:
    if msg.has_error():
        raise WireError(f"client error: {msg.error.reason}")
    content = msg.content
    if "metrics" not in content.metric_records or "info" not in content.config_records:
        raise WireError("train reply: missing metrics or info record")
    m = content.metric_records["metrics"]
    metrics: dict[str, float | int] = {}
    for k in _INT_METRICS:
        v = _get(m, k, int, "train reply")
        if v < 0:
            raise WireError(f"train reply: {k} must be >= 0, got {v}")
        metrics[k] = v
    for k in _FLOAT_METRICS:
        v = _get(m, k, (int, float), "train reply")
        if not math.isfinite(float(v)) or v < 0:
            raise WireError(f"train reply: {k} must be finite and >= 0, got {v}")
        metrics[k] = float(v)
    if metrics["refused"] not in (0, 1):
        raise WireError("train reply: refused must be 0 or 1")
    info = content.config_records["info"]
    refusal = _get(info, "refusal", str, "train reply")[:500]
    sha = _get(info, "update-sha256", str, "train reply")
    hist = _get(info, "history", str, "train reply")
    cid = _get(info, "client-id", str, "train reply")[:128]
    sig = _get(info, "signature", bytes, "train reply")
    if len(sig) > 512:
        raise WireError("train reply: signature too long")
    if len(hist) > MAX_CONFIG_CHARS:
        raise WireError("train reply: history too large")
    blob = None
    if metrics["refused"] == 0:
        if "update" not in content.array_records:
            raise WireError("train reply: no update although the client did not refuse")
        blob = blob_from_record(content.array_records["update"], max_bytes=max_blob_bytes)
    return TrainReply(metrics, blob, refusal, sha, hist, cid, sig)


# ----------------------------------------------------------------------------- eval reply


@dataclass(frozen=True)
class EvalReply:
    num_examples: int
    loss: float
    accuracy: float


def build_eval_reply(r: EvalReply) -> RecordDict:
    return RecordDict(
        {
            "metrics": MetricRecord(
                {"num-examples": r.num_examples, "loss": r.loss, "accuracy": r.accuracy}
            )
        }
    )


def parse_eval_reply(msg: Message) -> EvalReply:
    if msg.has_error():
        raise WireError(f"client error: {msg.error.reason}")
    if "metrics" not in msg.content.metric_records:
        raise WireError("eval reply: missing metrics")
    m = msg.content.metric_records["metrics"]
    n = _get(m, "num-examples", int, "eval reply")
    loss = float(_get(m, "loss", (int, float), "eval reply"))
    acc = float(_get(m, "accuracy", (int, float), "eval reply"))
    if n < 0 or not (0.0 <= acc <= 1.0 or math.isnan(acc)):
        raise WireError("eval reply: num-examples or accuracy out of range")
    return EvalReply(n, loss, acc)
