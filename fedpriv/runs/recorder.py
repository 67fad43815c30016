"""The recorder the server strategy writes through: metrics, ledger, egress, encrypted globals."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from fedpriv.fileio import atomic_write_bytes, atomic_write_text
from fedpriv.privacy.ledger import HashChainWriter
from fedpriv.runs.folder import RunDir
from fedpriv.strategy.core import ClientRoundRecord, RoundRecord

__all__ = ["RunRecorder"]


class RunRecorder:
    """Writes what the server observes each round: metrics, ledger, egress, encrypted globals."""

    def __init__(
        self,
        run_dir: RunDir,
        *,
        header: dict[str, Any],
        progress: Callable[[RoundRecord], None] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.header = header
        self.progress = progress
        self.rounds: list[dict[str, Any]] = []
        self._ledger = HashChainWriter(run_dir.ledger)
        self._egress = HashChainWriter(run_dir.egress)
        self._decrypt_journal: HashChainWriter | None = None
        (run_dir.root / "globals").mkdir(parents=True, exist_ok=True)

    def __call__(self, rec: RoundRecord, global_blob: bytes | None) -> None:
        enc = self.header.get("encryption", "off") != "off"
        dp = self.header.get("privacy_mode", "off") != "off"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        clients: dict[str, Any] = {}
        for c in rec.clients:
            m = c.metrics
            entry = {
                "node_id": c.node_id,
                "status": c.status,
                "reason": c.reason,
                "epsilon": m.get("epsilon"),
                "client_epsilon": m.get("client-epsilon"),
                "update_clipped": m.get("update-clipped"),
                # 0 = not disclosed (encrypted runs keep n_k inside the ciphertext)
                "num_examples": m.get("num-examples") or None,
                "steps": m.get("steps"),
                "clipped_values": m.get("clipped"),
                "bytes_up": c.bytes_up,
                "bytes_down": c.bytes_down,
                "train_loss": m.get("train-loss"),
                "train_seconds": m.get("train-seconds"),
                "encrypt_seconds": m.get("encrypt-seconds"),
            }
            # Only a verified record speaks for a client id; anything else is filed under its node,
            # so a replayed or forged reply can never overwrite the real client's entry.
            clients[c.client_id if c.record else _unverified(c.node_id, c.client_id)] = entry
            if c.record:
                self._ledger.append(self._ledger_line(now, rec.server_round, c))
            self._egress_lines(
                rec.server_round, "train-reply", c.client_id, c.node_id, c.status, c.parts, enc, dp
            )
        evals: dict[str, Any] = {}
        for ev in rec.evals:
            evals[ev.client_id if ev.record else _unverified(ev.node_id, ev.client_id)] = {
                "node_id": ev.node_id,
                "status": ev.status,
                "reason": ev.reason,
                "num_examples": ev.num_examples,
                "loss": ev.loss,
                "accuracy": ev.accuracy,
            }
            self._egress_lines(
                rec.server_round,
                "eval-reply",
                ev.client_id,
                ev.node_id,
                ev.status,
                ev.parts,
                enc,
                dp,
            )
        if global_blob is not None:
            path = self.run_dir.global_blob(rec.server_round)
            atomic_write_bytes(path, global_blob, mode=0o644)
        decryption = self._decryption(rec, enc, dp)
        self.rounds.append(
            {
                "round": rec.server_round,
                "sampled": len(rec.sampled),
                "accepted": rec.accepted,
                "refused": sum(c.status == "refused" for c in rec.clients),
                "rejected": sum(c.status == "rejected" for c in rec.clients),
                "failed": sum(c.status == "failed" for c in rec.clients),
                "federated_accuracy": rec.federated_accuracy,
                "federated_loss": rec.federated_loss,
                "heldout_accuracy": None,
                "heldout_loss": None,
                "seconds": rec.seconds,
                "aggregate_seconds": rec.aggregate_seconds,
                "global_bytes": rec.global_bytes,
                "bytes_up_total": sum(c.bytes_up for c in rec.clients),
                "bytes_down_total": sum(c.bytes_down for c in rec.clients),
                "clients": clients,
                "evaluations": evals,
                **({"decryption": decryption} if decryption is not None else {}),
            }
        )
        self.flush()
        if self.progress:
            self.progress(rec)

    def _decryption(self, rec: RoundRecord, enc: bool, dp: bool) -> dict[str, Any] | None:
        """Threshold custody: the aggregate ciphertext, a journal line per decryption reply (its
        signed decrypt record verbatim) and its egress lines; returns the metrics entry."""
        dec = rec.decryption
        if dec is None:
            return None
        if dec.aggregate is not None:
            atomic_write_bytes(
                self.run_dir.aggregate_blob(rec.server_round), dec.aggregate, mode=0o644
            )
        if self._decrypt_journal is None:
            self._decrypt_journal = HashChainWriter(self.run_dir.decryption_journal)
        for r in dec.replies:
            self._decrypt_journal.append(
                {
                    "round": rec.server_round,
                    "attempt": r.attempt,
                    "participants": dec.attempts[r.attempt]
                    if r.attempt < len(dec.attempts)
                    else [],
                    "client_id": r.client_id,
                    "node_id": r.node_id,
                    "status": r.status,
                    "reason": r.reason,
                    "bytes_down": r.bytes_down,
                    "bytes_up": r.bytes_up,
                    "decrypt_record": r.record,
                    "client_signature": r.signature,
                }
            )
            self._egress_lines(
                rec.server_round,
                "decrypt-reply",
                r.client_id,
                r.node_id,
                "accepted" if r.status == "decrypted" else r.status,
                r.parts,
                enc,
                dp,
            )
        return dec.to_dict()

    def _ledger_line(self, now: str, server_round: int, c: ClientRoundRecord) -> dict[str, Any]:
        """A ledger line: the server's view, and the client's own signed record verbatim.

        The summary fields repeat the signed record for readers; verification uses only
        ``client_record`` (checked against ``client_signature`` and the identity registry).
        """
        doc = json.loads(c.record)
        event = doc.get("event") or [None, None, None]
        m = c.metrics
        return {
            "time": now,
            "round": server_round,
            "client_id": c.client_id,
            "node_id": c.node_id,
            "status": c.status,
            "trained": doc.get("status") == "trained",
            "noise_multiplier": event[0],
            "sample_rate": event[1],
            "steps": event[2] if event[2] is not None else m.get("steps"),
            "delta": doc.get("delta"),
            "accountant": doc.get("accountant"),
            "epsilon": doc.get("epsilon"),
            "client_level_epsilon": (doc.get("client_level") or {}).get("epsilon"),
            "update_clipped": m.get("update-clipped"),
            "history": doc.get("history"),
            "rng": doc.get("rng"),
            "reason": c.reason,
            "client_record": c.record,
            "client_signature": c.signature,
        }

    def _egress_lines(
        self,
        server_round: int,
        message: str,
        client_id: str,
        node_id: int,
        status: str,
        parts: list[tuple[str, int, str]],
        enc: bool,
        dp: bool,
    ) -> None:
        """One egress line per part of a reply: what left the device, and what protects it."""
        for name, size, digest in parts:
            kind, encrypted, covered, note = _classify(message, name, enc, dp)
            self._egress.append(
                {
                    "round": server_round,
                    "client_id": client_id,
                    "node_id": node_id,
                    "message": message,
                    "part": name,
                    "kind": kind,
                    "bytes": size,
                    "sha256": digest,
                    "encrypted": encrypted,
                    "dp_protected": covered,
                    "covered_by_epsilon": covered,
                    "note": note,
                    "accepted": status in ("accepted", "evaluated"),
                }
            )

    def flush(self, extra: dict[str, Any] | None = None) -> None:
        doc = {**self.header, **(extra or {}), "rounds": self.rounds}
        atomic_write_text(
            self.run_dir.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644
        )


def _unverified(node_id: int, claimed: str) -> str:
    return (
        f"node-{node_id}" if claimed in ("", str(node_id)) else f"node-{node_id} (claims {claimed})"
    )


def _classify(message: str, part: str, enc: bool, dp: bool) -> tuple[str, bool, bool, str]:
    """(kind, encrypted, covered by epsilon, note) of one reply part."""
    if part == "update":
        return (
            "model-update",
            enc,
            dp,
            "the update; encrypted for the aggregate" + ("; DP-protected" if dp else ""),
        )
    if part == "metrics":
        if message == "eval-reply":
            return (
                "eval-metrics",
                False,
                False,
                "test-split size, loss and accuracy in plaintext: not covered by epsilon",
            )
        return (
            "train-metrics",
            False,
            False,
            "plaintext metadata (train loss, epsilon, steps, sample rate, timings): "
            "not covered by epsilon",
        )
    if part == "partial":
        return (
            "partial-decryption",
            enc,
            dp,
            "this device's share of the decryption of the round's aggregate (threshold custody),"
            " masked with a pad only the clients can derive: the server learns nothing from it",
        )
    if part == "info.record" and message == "decrypt-reply":
        return (
            "decrypt-record",
            False,
            False,
            "signed decrypt record: round, participant set, aggregate and partial digests, this"
            " device's count of partial decryptions: not covered by epsilon",
        )
    if part == "info.record":
        return (
            "client-record",
            False,
            False,
            "signed record: DP history (its sample rate reveals the local data size), epsilon, "
            "digests: not covered by epsilon",
        )
    if part == "info.refusal":
        return ("refusal", False, False, "the reason for a refusal, in plaintext")
    return ("identity", False, False, "client id and signature: who sent it")
