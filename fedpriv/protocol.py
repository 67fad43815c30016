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

from fedpriv.config import RunConfig, config_to_dict
from fedpriv.errors import WireError
from fedpriv.privacy.ledger import MAX_RECORD_CHARS

__all__ = [
    "DECRYPT_MESSAGE_TYPE",
    "TRAIN_METRICS",
    "DecryptReply",
    "DecryptRequest",
    "EvalReply",
    "Instruction",
    "SignedUpdateRecord",
    "TrainReply",
    "blob_from_record",
    "blob_to_record",
    "build_decrypt_reply",
    "build_decrypt_request",
    "build_eval_reply",
    "build_instruction",
    "build_train_reply",
    "metrics_digest",
    "parse_decrypt_reply",
    "parse_decrypt_request",
    "parse_eval_reply",
    "parse_instruction",
    "parse_train_reply",
    "reply_parts",
    "request_json",
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
    aggregates: tuple[tuple[int, bytes], ...] = ()
    """Distributed DP: encrypted aggregates (noisy gradient sums) of earlier rounds this client
    has not applied yet, oldest first, each with its round."""
    latest_aggregate: int = 0
    """Distributed DP: the latest round with an aggregate (a client that applied less than this
    after ``aggregates`` is still catching up)."""


MAX_AGGREGATES = 64
"""Most aggregates one instruction carries (a client further behind catches up over rounds)."""


def request_json(cfg: RunConfig) -> str:
    """The run config as the server sends it: a request, without the devices' own policy.

    The ``[device]`` section belongs to the data owners (each virtual client holds its own copy);
    a request that carries one is refused by the clients.
    """
    doc = config_to_dict(cfg)
    doc.pop("device", None)
    return json.dumps(doc, sort_keys=True)


def build_instruction(ins: Instruction) -> RecordDict:
    fields: dict[str, Any] = {
        "server-round": ins.server_round,
        "fedpriv-config": ins.config_json,
        "params-fingerprint": ins.params_fingerprint,
        "run-id": ins.run_id,
    }
    if ins.aggregates or ins.latest_aggregate:
        fields["latest-aggregate"] = ins.latest_aggregate
    rd = RecordDict({"config": ConfigRecord(fields)})
    if ins.global_blob is not None:
        rd["global"] = blob_to_record(ins.global_blob)
    for rnd, blob in ins.aggregates:
        rd[f"aggregate-{rnd}"] = blob_to_record(blob)
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
    aggs, latest = _parse_aggregates(content, cfg, rnd, max_blob_bytes)
    return Instruction(rnd, text, fp, blob, run_id, aggs, latest)


def _parse_aggregates(
    content: RecordDict, cfg: Any, rnd: int, max_blob_bytes: int
) -> tuple[tuple[tuple[int, bytes], ...], int]:
    """The distributed-DP aggregates: ``aggregate-<round>`` arrays, rounds in 1..rnd-1."""
    latest = cfg.get("latest-aggregate", 0)
    if not isinstance(latest, int) or isinstance(latest, bool) or not 0 <= latest < rnd:
        raise WireError(f"instruction: latest-aggregate must be an integer in 0..{rnd - 1}")
    names = [k for k in content.array_records if k != "global"]
    if len(names) > MAX_AGGREGATES:
        raise WireError(f"instruction: more than {MAX_AGGREGATES} aggregates")
    out = []
    for name in names:
        tail = name.removeprefix("aggregate-")
        if tail == name or not tail.isdigit() or tail != str(int(tail)):
            raise WireError(f"instruction: unexpected array record {name[:40]!r}")
        r = int(tail)
        if not 1 <= r <= latest:
            raise WireError(f"instruction: aggregate of round {r} is not in 1..{latest}")
        out.append((r, blob_from_record(content.array_records[name], max_bytes=max_blob_bytes)))
    return tuple(sorted(out)), latest


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
    """Client -> server after a train instruction: an update, or a refusal, and its signed record.

    ``record`` is the client record (:mod:`fedpriv.privacy.ledger`) exactly as the client signed
    it: it binds the run, round, client id, sending node, the update's and metrics' SHA-256, the
    DP history and epsilon. ``metrics`` are plaintext numbers for the server's progress display,
    bound to the record by their digest.
    """

    metrics: dict[str, float | int]
    blob: bytes | None
    refusal: str
    client_id: str
    record: str
    signature: bytes


def build_train_reply(r: TrainReply) -> RecordDict:
    rd = RecordDict(
        {
            "metrics": MetricRecord(dict(r.metrics)),
            "info": ConfigRecord(
                {
                    "refusal": r.refusal,
                    "client-id": r.client_id,
                    "record": r.record,
                    "signature": r.signature,
                }
            ),
        }
    )
    if r.blob is not None:
        rd["update"] = blob_to_record(r.blob)
    return rd


def _info(content: RecordDict, where: str) -> tuple[str, str, bytes]:
    info = content.config_records["info"]
    cid = _get(info, "client-id", str, where)
    record = _get(info, "record", str, where)
    sig = _get(info, "signature", bytes, where)
    if not 0 < len(cid) <= 128:
        raise WireError(f"{where}: client-id must be 1..128 characters")
    if len(sig) > 512:
        raise WireError(f"{where}: signature too long")
    if not 0 < len(record) <= MAX_RECORD_CHARS:
        raise WireError(f"{where}: record missing or longer than {MAX_RECORD_CHARS} characters")
    return cid, record, sig


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
    refusal = _get(content.config_records["info"], "refusal", str, "train reply")[:500]
    cid, record, sig = _info(content, "train reply")
    blob = None
    if metrics["refused"] == 0:
        if "update" not in content.array_records:
            raise WireError("train reply: no update although the client did not refuse")
        blob = blob_from_record(content.array_records["update"], max_bytes=max_blob_bytes)
    elif "update" in content.array_records:
        raise WireError("train reply: an update although the client refused")
    return TrainReply(metrics, blob, refusal, cid, record, sig)


# ----------------------------------------------------------------------------- eval reply


@dataclass(frozen=True)
class EvalReply:
    """Client -> server after an evaluate instruction: metrics on its local test split, signed."""

    num_examples: int
    loss: float
    accuracy: float
    client_id: str = ""
    record: str = ""
    signature: bytes = b""


def build_eval_reply(r: EvalReply) -> RecordDict:
    return RecordDict(
        {
            "metrics": MetricRecord(
                {"num-examples": r.num_examples, "loss": r.loss, "accuracy": r.accuracy}
            ),
            "info": ConfigRecord(
                {"client-id": r.client_id, "record": r.record, "signature": r.signature}
            ),
        }
    )


def parse_eval_reply(msg: Message, *, max_examples: int) -> EvalReply:
    """Validate an evaluation reply: finite loss, accuracy in [0, 1], count within the public cap."""
    if msg.has_error():
        raise WireError(f"client error: {msg.error.reason}")
    content = msg.content
    if "metrics" not in content.metric_records or "info" not in content.config_records:
        raise WireError("eval reply: missing metrics or info record")
    m = content.metric_records["metrics"]
    n = _get(m, "num-examples", int, "eval reply")
    loss = float(_get(m, "loss", (int, float), "eval reply"))
    acc = float(_get(m, "accuracy", (int, float), "eval reply"))
    if not 0 <= n <= max_examples:
        raise WireError(f"eval reply: num-examples {n} outside [0, {max_examples}]")
    if not math.isfinite(loss) or loss < 0:
        raise WireError(f"eval reply: loss must be finite and >= 0, got {loss}")
    if not 0.0 <= acc <= 1.0:
        raise WireError(f"eval reply: accuracy must be in [0, 1], got {acc}")
    cid, record, sig = _info(content, "eval reply")
    return EvalReply(n, loss, acc, cid, record, sig)


def reply_parts(content: RecordDict) -> list[tuple[str, int, str]]:
    """What a reply carries, part by part: ``(name, bytes, sha256)`` for the egress record.

    Array records count their raw bytes, config fields their UTF-8 or raw bytes, metrics 8 bytes
    per number: the payload that left the device (Flower's framing is not counted).
    """
    out: list[tuple[str, int, str]] = []
    for name, arr_rec in content.array_records.items():
        for key in arr_rec:
            data = arr_rec[key].numpy().tobytes()
            out.append((f"{name}", len(data), hashlib.sha256(data).hexdigest()))
    for name, m_rec in content.metric_records.items():
        blob = json.dumps(dict(m_rec), sort_keys=True).encode()
        out.append((name, 8 * len(m_rec), hashlib.sha256(blob).hexdigest()))
    for name, c_rec in content.config_records.items():
        for key, val in c_rec.items():
            raw = val if isinstance(val, bytes) else str(val).encode()
            if raw:
                out.append((f"{name}.{key}", len(raw), hashlib.sha256(raw).hexdigest()))
    return out


# ----------------------------------------------------------------------------- threshold decryption
# Server -> the T members of P: "partially decrypt this aggregate"; client -> server: the
# (masked) partial decryption, or a refusal, with a signed decrypt record. Flower message type
# ``train.decrypt`` (``ClientApp.train("decrypt")``).

DECRYPT_MESSAGE_TYPE = "train.decrypt"
MAX_DECRYPT_RECORDS = 4096


@dataclass(frozen=True)
class SignedUpdateRecord:
    """One accepted update's signed client record, as the server received it."""

    client_id: str
    record: str
    signature: bytes


@dataclass(frozen=True)
class DecryptRequest:
    """Server -> client: partially decrypt ``aggregate`` as a member of ``participants``.

    ``records`` are the signed records of the updates the aggregate sums, so the client can
    check that it sums at least k_min distinct updates of this run and round; ``updates``
    (``encryption.decryption_check = "rebuild"``) are those updates, in the same order, so it
    can rebuild the aggregate itself.
    """

    server_round: int
    run_id: str
    config_json: str
    params_fingerprint: str
    aggregate: bytes
    participants: tuple[int, ...]
    records: tuple[SignedUpdateRecord, ...]
    updates: tuple[bytes, ...] = ()
    registry_proof: tuple[str, str, bytes] | None = None
    """Deployment: the server bundle's identity registry, manifest and the dealer's signature
    of it, so devices check records of nodes added after their own bundle was made."""


def build_decrypt_request(req: DecryptRequest) -> RecordDict:
    rd = RecordDict(
        {
            "decrypt": ConfigRecord(
                {
                    "server-round": req.server_round,
                    "run-id": req.run_id,
                    "fedpriv-config": req.config_json,
                    "params-fingerprint": req.params_fingerprint,
                    "participants": [int(i) for i in req.participants],
                    "record-clients": [r.client_id for r in req.records],
                    "records": [r.record for r in req.records],
                    "signatures": [r.signature for r in req.records],
                }
            ),
            "aggregate": blob_to_record(req.aggregate),
        }
    )
    if req.registry_proof is not None:
        reg, manifest, sig = req.registry_proof
        rd["registry"] = ConfigRecord({"registry": reg, "manifest": manifest, "signature": sig})
    if req.updates:
        rd["updates"] = ArrayRecord(
            {
                f"u{i:05d}": Array(np.frombuffer(b, dtype=np.uint8).copy())
                for i, b in enumerate(req.updates)
            }
        )
    return rd


def _str_list(rec: Any, key: str, where: str, limit: int) -> list[Any]:
    val = _get(rec, key, list, where)
    if len(val) > MAX_DECRYPT_RECORDS:
        raise WireError(f"{where}: {key} has more than {MAX_DECRYPT_RECORDS} entries")
    for v in val:
        if not isinstance(v, (str, bytes)) or not 0 < len(v) <= limit:
            raise WireError(f"{where}: {key} must hold non-empty entries of at most {limit}")
    return list(val)


def parse_decrypt_request(content: RecordDict, *, max_blob_bytes: int) -> DecryptRequest:
    where = "decryption request"
    if "decrypt" not in content.config_records or "aggregate" not in content.array_records:
        raise WireError(f"{where}: missing decrypt or aggregate record")
    rec = content.config_records["decrypt"]
    rnd = _get(rec, "server-round", int, where)
    run_id = _get(rec, "run-id", str, where)
    text = _get(rec, "fedpriv-config", str, where)
    fp = _get(rec, "params-fingerprint", str, where)
    ps = _get(rec, "participants", list, where)
    if rnd < 1 or not 0 < len(run_id) <= 128 or len(text) > MAX_CONFIG_CHARS:
        raise WireError(f"{where}: bad round, run id or config size")
    if not ps or len(ps) > 65535 or not all(isinstance(i, int) and 0 < i < 65536 for i in ps):
        raise WireError(f"{where}: participants must be share indices")
    cids = _str_list(rec, "record-clients", where, 128)
    records = _str_list(rec, "records", where, MAX_RECORD_CHARS)
    sigs = _str_list(rec, "signatures", where, 512)
    if not (len(cids) == len(records) == len(sigs)) or not records:
        raise WireError(f"{where}: records, their client ids and signatures do not line up")
    if not all(isinstance(c, str) for c in cids) or not all(isinstance(r, str) for r in records):
        raise WireError(f"{where}: record client ids and records must be strings")
    if not all(isinstance(s, bytes) for s in sigs):
        raise WireError(f"{where}: signatures must be bytes")
    aggregate = blob_from_record(content.array_records["aggregate"], max_bytes=max_blob_bytes)
    updates: list[bytes] = []
    if "updates" in content.array_records:
        arrs = content.array_records["updates"]
        if sorted(arrs.keys()) != [f"u{i:05d}" for i in range(len(records))]:
            raise WireError(f"{where}: one update per record expected, named u00000...")
        for key in sorted(arrs.keys()):
            arr = arrs[key]
            if len(arr.shape) != 1 or arr.shape[0] > max_blob_bytes:
                raise WireError(f"{where}: update {key} is not a 1-D blob within the limit")
            data = arr.numpy()
            if data.dtype != np.uint8 or data.ndim != 1:
                raise WireError(f"{where}: update {key} is not a uint8 blob")
            updates.append(data.tobytes())
    signed = tuple(SignedUpdateRecord(c, r, s) for c, r, s in zip(cids, records, sigs, strict=True))
    proof = None
    if "registry" in content.config_records:
        reg = content.config_records["registry"]
        proof = (
            _get(reg, "registry", str, where),
            _get(reg, "manifest", str, where),
            _get(reg, "signature", bytes, where),
        )
        if len(proof[0]) > 1 << 22 or len(proof[1]) > 1 << 22 or len(proof[2]) > 512:
            raise WireError(f"{where}: identity registry too large")
    return DecryptRequest(
        rnd, run_id, text, fp, aggregate, tuple(int(i) for i in ps), signed, tuple(updates), proof
    )


@dataclass(frozen=True)
class DecryptReply:
    """Client -> server: a masked partial decryption (None when refused) and its signed record."""

    client_id: str
    record: str
    signature: bytes
    partial: bytes | None
    refusal: str = ""


def build_decrypt_reply(r: DecryptReply) -> RecordDict:
    rd = RecordDict(
        {
            "info": ConfigRecord(
                {
                    "client-id": r.client_id,
                    "record": r.record,
                    "signature": r.signature,
                    "refusal": r.refusal,
                }
            )
        }
    )
    if r.partial is not None:
        rd["partial"] = blob_to_record(r.partial)
    return rd


def parse_decrypt_reply(msg: Message, *, max_blob_bytes: int) -> DecryptReply:
    where = "decryption reply"
    if msg.has_error():
        raise WireError(f"client error: {msg.error.reason}")
    content = msg.content
    if "info" not in content.config_records:
        raise WireError(f"{where}: missing info record")
    cid, record, sig = _info(content, where)
    refusal = _get(content.config_records["info"], "refusal", str, where)[:500]
    partial = None
    if "partial" in content.array_records:
        partial = blob_from_record(content.array_records["partial"], max_bytes=max_blob_bytes)
    if (partial is None) == (not refusal):
        raise WireError(f"{where}: a reply carries either a partial decryption or a refusal")
    return DecryptReply(cid, record, sig, partial, refusal)
