"""The server's restart point after each fully recorded round."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from fedpriv.errors import StateError
from fedpriv.fileio import atomic_write_text
from fedpriv.runs.folder import RunDir
from fedpriv.runs.recorder import RunRecorder
from fedpriv.strategy.core import EncryptedFedAvg

__all__ = ["Checkpoint"]

log = logging.getLogger("fedpriv.server")


class Checkpoint:
    """The server's restart point: round, run id, sampling RNG and the encrypted global model.

    Written atomically after each round is fully recorded. Holds only public material (the
    global model is the encrypted aggregate the server already has).
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def save(self, strategy: EncryptedFedAvg, server_round: int, fingerprint: str) -> None:
        version, internal, gauss = strategy._rng.getstate()
        doc = {
            "version": 1,
            "round": server_round,
            "run_id": strategy.run_id,
            "params_fingerprint": fingerprint,
            "rng": [version, list(internal), gauss],
            "global_sha256": hashlib.sha256(strategy.global_blob or b"").hexdigest(),
        }
        atomic_write_text(self.path, json.dumps(doc), mode=0o644)

    def restore(
        self, strategy: EncryptedFedAvg, recorder: RunRecorder, rd: RunDir, fingerprint: str
    ) -> int:
        """Load the checkpoint into ``strategy``/``recorder``; return the first round to run."""
        if not self.path.exists():
            raise StateError(f"{self.path}: no checkpoint to resume from")
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            rnd = int(doc["round"])
            version, internal, gauss = doc["rng"]
            blob = rd.global_blob(rnd).read_bytes()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"{self.path}: unreadable checkpoint ({exc})") from None
        if doc.get("params_fingerprint") != fingerprint:
            raise StateError(f"{self.path}: checkpoint was made with other encryption parameters")
        if hashlib.sha256(blob).hexdigest() != doc.get("global_sha256"):
            raise StateError(
                f"{rd.global_blob(rnd)}: encrypted global model does not match the checkpoint"
            )
        strategy._rng.setstate((version, tuple(internal), gauss))
        strategy.run_id = str(doc["run_id"])
        strategy.global_blob = blob
        old = rd.read_metrics() if rd.metrics.exists() else {}
        recorder.rounds = [r for r in old.get("rounds", []) if r["round"] <= rnd]
        resumed = [
            *old.get("resumed", []),
            {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "from_round": rnd + 1},
        ]
        recorder.header["resumed"] = resumed
        recorder.header["started"] = old.get("started", recorder.header["started"])
        log.warning("resuming run %s after round %d", strategy.run_id, rnd)
        return rnd + 1
