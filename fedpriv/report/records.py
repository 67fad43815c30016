"""The run folder's record files as the report builder and the verifier both read them.

Reading is kept apart from interpreting (:mod:`fedpriv.report.facts`): ``verify`` re-reads the
chains on its own rather than trusting what the builder made of them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError, VerificationError
from fedpriv.privacy.ledger import GENESIS, read_chain, verify_chain
from fedpriv.report.canonical import sha256_file

__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "TRACKED_FILES",
    "ChainState",
    "load_chain",
    "read_json",
    "run_id_for",
]

REPORT_JSON = "privacy_report.json"
REPORT_HTML = "privacy_report.html"

# Files whose SHA-256 the report pins (relative to the run folder; absent ones are skipped).
TRACKED_FILES = (
    "config.json",
    "config.toml",
    "metrics.json",
    "keys/server/params.json",
    "model.safetensors",
    "audit.json",
)


@dataclass(frozen=True)
class ChainState:
    """A hash-chained JSONL file as found on disk."""

    file: str
    entries: tuple[dict[str, Any], ...]
    head: str
    sha256: str

    @property
    def lines(self) -> int:
        return len(self.entries)


def run_id_for(metrics: Mapping[str, Any], ledger: ChainState) -> str:
    """A stable id for a run: name, start time and a short digest of what makes it unique.

    It does not depend on the folder's path, so moving a run folder keeps its signing key.
    """
    started = str(metrics.get("started", ""))
    compact = "".join(ch for ch in started if ch.isalnum())
    first = ledger.entries[0].get("hash", GENESIS) if ledger.entries else GENESIS
    seed = "|".join(
        [
            str(metrics.get("config_hash", "")),
            started,
            str(metrics.get("params_fingerprint", "")),
            str(first),
        ]
    )
    digest = hashlib.sha256(seed.encode()).hexdigest()[:10]
    name = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in str(metrics.get("name", "")))
    return f"{name or 'run'}-{compact or 'unstarted'}-{digest}"


def load_chain(path: Path, root: Path) -> ChainState:
    """Read and verify a hash chain. Raises VerificationError naming the first broken line.

    A missing file is an empty chain (a run where no client ever answered writes none); its
    digest is that of zero bytes, so deleting a non-empty record still fails verification.
    """
    rel = path.relative_to(root).as_posix()
    if not path.exists():
        return ChainState(rel, (), GENESIS, hashlib.sha256(b"").hexdigest())
    try:
        entries = read_chain(path)
    except UnicodeDecodeError as exc:
        raise VerificationError(
            f"{rel}: not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    head = verify_chain(entries, source=rel)
    return ChainState(rel, tuple(entries), head, sha256_file(path))


def read_json(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in ``path``; StateError (naming ``what``) when missing or unreadable."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path}: {what} is missing (is this a fedpriv run folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: cannot read {what} ({exc})") from None
    if not isinstance(doc, dict):
        raise StateError(f"{path}: {what} must be a JSON object")
    return doc
