"""The clients' own signed records inside the privacy ledger, checked without trusting the server.

The server writes ``privacy_ledger.jsonl`` and could rebuild its hash chain after dropping or
editing lines. What it cannot forge are the *client records* each line carries: every client
signed its own record (round, status, DP history, epsilon, the hash of its previous record in the
run) with its identity key. This module checks them against the identity registry, rebuilds each
client's chain, and compares the chain's end with *heads* the clients exported themselves
(``fedpriv client ledger-head``), so a ledger missing a client's latest records fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.errors import CryptoError, VerificationError, WireError
from fedpriv.privacy.ledger import GENESIS, RECORD_FORMAT, parse_record, record_digest
from fedpriv.privacy.rng import RNG_OS

__all__ = [
    "HEAD_FORMAT",
    "ClientChain",
    "Head",
    "RecordCheck",
    "check_client_records",
    "check_heads",
    "head_from_state",
    "load_head",
    "write_head",
]

HEAD_FORMAT = "fedpriv.ledger-head/1"
# Ledger fields that repeat the signed record for readers: they must say what the record says.
_MIRRORED = ("round", "client_id", "node_id", "epsilon", "history", "delta", "accountant", "rng")


@dataclass
class ClientChain:
    """One client's signed records of one run, in ledger order."""

    client_id: str
    run_id: str
    records: list[dict[str, Any]] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    @property
    def last(self) -> dict[str, Any]:
        return self.records[-1]


@dataclass(frozen=True)
class RecordCheck:
    chains: dict[str, ClientChain]
    problems: tuple[str, ...]
    gaps: tuple[str, ...]
    """Records missing in the middle of a chain (a lost reply): later records still carry the
    cumulative history, so nothing is under-reported; listed, not failed."""
    test_seeded: tuple[str, ...]
    """Clients whose records say their DP randomness came from a test seed (not private)."""


def check_client_records(
    entries: Iterable[dict[str, Any]], registry: IdentityRegistry
) -> RecordCheck:
    """Verify every ledger line's client record; return the per-client chains and problems."""
    chains: dict[str, ClientChain] = {}
    problems: list[str] = []
    gaps: list[str] = []
    seeded: set[str] = set()
    for e in entries:
        where = f"ledger line {e.get('seq')} ({e.get('client_id')}, round {e.get('round')})"
        text, sig_hex = e.get("client_record"), e.get("client_signature")
        if not isinstance(text, str) or not isinstance(sig_hex, str) or not text:
            problems.append(f"{where}: no client-signed record (the server alone wrote it)")
            continue
        try:
            rec = parse_record(text, RECORD_FORMAT, source=where)
            digest = record_digest(text)
            registry.verify_record(str(rec.get("client_id")), digest, bytes.fromhex(sig_hex))
        except (VerificationError, WireError, ValueError) as exc:
            problems.append(f"{where}: {exc}")
            continue
        for key in _MIRRORED:
            if key in e and e.get(key) != rec.get(key):
                problems.append(
                    f"{where}: the line says {key}={e.get(key)!r}, the client signed {rec.get(key)!r}"
                )
        if e.get("status") == "accepted" and rec.get("status") != "trained":
            problems.append(f"{where}: accepted, but the client's record says {rec.get('status')}")
        if rec.get("rng") != RNG_OS:
            seeded.add(str(rec.get("client_id")))
        cid, run_id = str(rec["client_id"]), str(rec.get("run_id"))
        chain = chains.setdefault(cid, ClientChain(cid, run_id))
        if run_id != chain.run_id:
            problems.append(f"{where}: record of run {run_id}, earlier records of {chain.run_id}")
            continue
        seq, prev = rec.get("seq"), rec.get("prev")
        if not isinstance(seq, int) or seq < 0:
            problems.append(f"{where}: the record has no valid seq")
            continue
        expected = chain.records[-1]["seq"] + 1 if chain.records else 0
        if seq < expected:
            problems.append(f"{where}: record seq {seq} repeats or reorders the client's chain")
            continue
        if seq == expected:
            want_prev = chain.digests[-1] if chain.digests else GENESIS
            if prev != want_prev:
                problems.append(f"{where}: the record does not link to the client's previous one")
        else:
            gaps.append(
                f"{cid}: record(s) {expected}..{seq - 1} missing before round {rec.get('round')}"
                " (a lost reply: the next record carries the cumulative history)"
            )
        chain.records.append(rec)
        chain.digests.append(digest)
    return RecordCheck(chains, tuple(problems), tuple(gaps), tuple(sorted(seeded)))


@dataclass(frozen=True)
class Head:
    """A client's own statement of its latest record in a run (self-authenticating)."""

    client_id: str
    run_id: str
    seq: int
    record: str
    signature: str
    source: str = ""

    @property
    def digest(self) -> str:
        return record_digest(self.record)


def head_from_state(state_path: Path) -> list[Head]:
    """The heads a client's ``privacy_state.json`` holds (one per run it signed records in)."""
    from fedpriv.privacy.state import ClientPrivacyState

    try:
        state = ClientPrivacyState.from_json(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise VerificationError(f"{state_path}: cannot read ({exc})") from None
    out = []
    for run in state.runs:
        if run.head_record:
            rec = json.loads(run.head_record)
            out.append(
                Head(
                    str(rec.get("client_id")),
                    run.run_id,
                    run.seq - 1,
                    run.head_record,
                    run.head_signature,
                    str(state_path),
                )
            )
    return out


def write_head(head: Head, path: Path) -> None:
    from fedpriv.fileio import atomic_write_text

    doc = {
        "format": HEAD_FORMAT,
        "client_id": head.client_id,
        "run_id": head.run_id,
        "seq": head.seq,
        "record": head.record,
        "signature": head.signature,
    }
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=True), mode=0o644)


def load_head(path: Path) -> Head:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{path}: not a ledger head ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
        raise VerificationError(f"{path}: not a {HEAD_FORMAT} document")
    try:
        return Head(
            str(doc["client_id"]),
            str(doc["run_id"]),
            int(doc["seq"]),
            str(doc["record"]),
            str(doc["signature"]),
            str(path),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise VerificationError(f"{path}: incomplete ledger head ({exc})") from None


def check_heads(
    chains: dict[str, ClientChain], heads: Sequence[Head], registry: IdentityRegistry
) -> list[str]:
    """Each head must be a genuine record of the client and the last one the ledger holds."""
    problems: list[str] = []
    for h in heads:
        where = f"{h.client_id}'s head (seq {h.seq}, {h.source or 'given'})"
        try:
            rec = parse_record(h.record, RECORD_FORMAT, source=where)
            registry.verify_record(h.client_id, h.digest, bytes.fromhex(h.signature))
        except (VerificationError, WireError, ValueError, CryptoError) as exc:
            problems.append(f"{where}: not a genuine signed record ({exc})")
            continue
        if rec.get("client_id") != h.client_id or rec.get("seq") != h.seq:
            problems.append(f"{where}: the signed record names another client or seq")
            continue
        chain = chains.get(h.client_id)
        if chain is None:
            problems.append(f"{where}: the ledger has no record of this client at all")
            continue
        if chain.run_id != h.run_id:
            continue  # a head of another run this device took part in
        last = chain.records[-1]
        if h.digest in chain.digests:
            continue  # the head is in the ledger (the ledger may go further: fine)
        if h.seq > int(last["seq"]):
            problems.append(
                f"{where}: the ledger ends at the client's record {last['seq']} (round"
                f" {last.get('round')}); the client signed up to record {h.seq} (round"
                f" {rec.get('round')}): its latest rounds are missing"
            )
        else:
            problems.append(f"{where}: the ledger holds a different record at that position")
    return problems
