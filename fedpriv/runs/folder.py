"""The run folder and its layout.

::

    RUN_DIR/
      config.toml, config.json   resolved config (and its hash in metrics.json)
      metrics.json               per round: accuracy, loss, per-client epsilon, bytes up/down
      privacy_ledger.jsonl       one hash-chained line per client per round it was asked to train
      egress.jsonl               every message a client sent: kind, bytes, sha256, encrypted, DP
      globals/round_NNN.bin      the encrypted global model after each round (server-side view;
                                 threshold custody: the masked combined decryption clients finish)
      globals/round_NNN.aggregate.bin  threshold custody: the aggregate ciphertext T clients decrypted
      decryption.jsonl           threshold custody: every partial-decryption reply, signed
      model.safetensors          final global model as the clients decrypt it (no pickle)
      keys/                      simulation only: the key dealer's output (see fedpriv.keys)
      clients/<id>/              simulation only: each client's persistent privacy state
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = ["RunDir"]


@dataclasses.dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def ledger(self) -> Path:
        return self.root / "privacy_ledger.jsonl"

    @property
    def egress(self) -> Path:
        return self.root / "egress.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def server_params(self) -> Path:
        return self.root / "keys" / "server" / "params.json"

    @property
    def client_keys(self) -> Path:
        return self.root / "keys" / "client"

    def global_blob(self, server_round: int) -> Path:
        return self.root / "globals" / f"round_{server_round:03d}.bin"

    def aggregate_blob(self, server_round: int) -> Path:
        """Threshold custody: the round's aggregate ciphertext (``global_blob`` is its masked
        combined decryption)."""
        return self.root / "globals" / f"round_{server_round:03d}.aggregate.bin"

    @property
    def decryption_journal(self) -> Path:
        return self.root / "decryption.jsonl"

    def client_state(self, client_id: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in client_id)
        return self.root / "clients" / safe / "privacy_state.json"

    def read_metrics(self) -> dict[str, Any]:
        return dict(json.loads(self.metrics.read_text(encoding="utf-8")))
