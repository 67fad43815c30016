"""Append-only, hash-chained JSONL ledger (privacy ledger, egress record) and client records.

Each line carries ``prev`` (the previous line's hash) and ``hash`` = SHA-256 over the canonical
JSON of the line without its ``hash`` field, so editing, inserting, deleting or reordering any
line breaks the chain and :func:`verify_chain` names the first line that broke.

That chain is written by the server, which could rebuild it after dropping a line. So every
privacy-relevant line also carries a *client record*: a JSON document the client itself made and
signed with its identity key (:func:`make_record`), holding its round, status, DP history and
epsilon, and the hash of its own previous record in the run (a per-client chain). The server
cannot alter a client record, and a client can export the head of its chain so that a ledger
missing its latest records fails verification.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fedpriv.errors import VerificationError

__all__ = [
    "DECRYPT_FORMAT",
    "EVAL_FORMAT",
    "GENESIS",
    "MAX_RECORD_CHARS",
    "RECORD_FORMAT",
    "HashChainWriter",
    "make_record",
    "parse_record",
    "read_chain",
    "record_digest",
    "verify_chain",
]

GENESIS = "0" * 64
RECORD_FORMAT = "fedpriv.ledger-record/1"
EVAL_FORMAT = "fedpriv.eval-record/1"
DECRYPT_FORMAT = "fedpriv.decrypt-record/1"
MAX_RECORD_CHARS = 1 << 16


def make_record(fmt: str, fields: dict[str, Any]) -> tuple[str, str]:
    """Serialize a client record; returns ``(json_text, sha256_hex)``.

    The exact text is what is signed, stored and verified: nobody re-serializes it, so float
    formatting can never change a digest.
    """
    text = json.dumps(
        {"format": fmt, **fields}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return text, hashlib.sha256(text.encode()).hexdigest()


def record_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def parse_record(text: Any, fmt: str, *, source: str = "client record") -> dict[str, Any]:
    """Parse a client record received from another party (size, JSON, format checked)."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_RECORD_CHARS:
        raise VerificationError(f"{source}: missing or larger than {MAX_RECORD_CHARS} characters")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VerificationError(f"{source}: not valid JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise VerificationError(f"{source}: not a {fmt} document")
    return obj


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


class HashChainWriter:
    """Appends entries to a JSONL file, continuing an existing chain after a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._prev = GENESIS
        self._seq = 0
        if path.exists():
            entries = read_chain(path)
            verify_chain(entries, source=str(path))
            if entries:
                self._prev = entries[-1]["hash"]
                self._seq = entries[-1]["seq"] + 1

    @property
    def head(self) -> str:
        return self._prev

    def append(self, entry: dict[str, Any]) -> dict[str, Any]:
        line = {**entry, "seq": self._seq, "prev": self._prev}
        line["hash"] = _digest(line)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self._prev = line["hash"]
        self._seq += 1
        return line


def read_chain(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for i, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise VerificationError(f"{path}: line {i} is not valid JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise VerificationError(f"{path}: line {i} is not a JSON object")
            out.append(obj)
    return out


def verify_chain(entries: list[dict[str, Any]], *, source: str = "ledger") -> str:
    """Check sequence numbers and hash links; return the head hash. Raises VerificationError."""
    prev = GENESIS
    for i, e in enumerate(entries):
        if e.get("seq") != i:
            raise VerificationError(
                f"{source}: line {i + 1} has seq {e.get('seq')!r}, expected {i} (line removed or reordered)"
            )
        if e.get("prev") != prev:
            raise VerificationError(
                f"{source}: line {i + 1} does not link to the previous line (chain broken)"
            )
        if e.get("hash") != _digest(e):
            raise VerificationError(f"{source}: line {i + 1} was altered (hash mismatch)")
        prev = e["hash"]
    return prev
