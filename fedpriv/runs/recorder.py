"""The recorder the server strategy writes through: metrics, ledger, egress, encrypted globals."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any

from fedpriv.fileio import atomic_write_bytes, atomic_write_text
from fedpriv.privacy.ledger import HashChainWriter
from fedpriv.runs.folder import RunDir
from fedpriv.strategy.core import RoundRecord

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
            clients[c.client_id] = entry
            if c.status in ("accepted", "refused") or (c.status == "rejected" and m):
                self._ledger.append(
                    {
                        "time": now,
                        "round": rec.server_round,
                        "client_id": c.client_id,
                        "node_id": c.node_id,
                        "status": c.status,
                        "trained": int(m.get("steps", 0) or 0) > 0,
                        "noise_multiplier": m.get("noise-multiplier"),
                        "sample_rate": m.get("sample-rate"),
                        "steps": m.get("steps"),
                        "delta": self.header.get("delta"),
                        "accountant": self.header.get("accountant"),
                        "epsilon": m.get("epsilon"),
                        "client_level_epsilon": m.get("client-epsilon"),
                        "update_clipped": m.get("update-clipped"),
                        "history": json.loads(c.history_json) if c.history_json else None,
                        "reason": c.reason,
                    }
                )
            if c.bytes_up:
                self._egress.append(
                    {
                        "round": rec.server_round,
                        "client_id": c.client_id,
                        "kind": "model-update",
                        "bytes": c.bytes_up,
                        "sha256": c.update_sha256,
                        "encrypted": enc,
                        "dp_protected": dp,
                        "accepted": c.status == "accepted",
                    }
                )
            if m:
                blob = json.dumps(m, sort_keys=True).encode()
                self._egress.append(
                    {
                        "round": rec.server_round,
                        "client_id": c.client_id,
                        "kind": "train-metrics",
                        "bytes": len(blob),
                        "sha256": hashlib.sha256(blob).hexdigest(),
                        "encrypted": False,
                        "dp_protected": False,
                        "accepted": True,
                    }
                )
        if global_blob is not None:
            path = self.run_dir.global_blob(rec.server_round)
            atomic_write_bytes(path, global_blob, mode=0o644)
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
            }
        )
        self.flush()
        if self.progress:
            self.progress(rec)

    def flush(self, extra: dict[str, Any] | None = None) -> None:
        doc = {**self.header, **(extra or {}), "rounds": self.rounds}
        atomic_write_text(
            self.run_dir.metrics, json.dumps(doc, indent=2, sort_keys=True), mode=0o644
        )
