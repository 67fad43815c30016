"""Read a run folder's records into one immutable snapshot for the report builder and verifier."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError, VerificationError
from fedpriv.privacy.ledger import GENESIS, read_chain, verify_chain
from fedpriv.report.canonical import sha256_file
from fedpriv.runs import RunDir

__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "TRACKED_FILES",
    "ChainState",
    "RunRecords",
    "load_chain",
    "load_records",
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


@dataclass(frozen=True)
class RunRecords:
    """Everything the report is built from, read once."""

    root: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    ledger: ChainState
    egress: ChainState
    params: dict[str, Any] | None
    files: tuple[tuple[str, str, int], ...]
    """(relative path, sha256, size in bytes) of each tracked file that exists."""
    audit: dict[str, Any] | None

    @property
    def run_id(self) -> str:
        return run_id_for(self.metrics, self.ledger)

    @property
    def record_dp(self) -> bool:
        """Record-level DP-SGD on each client (privacy modes ``record`` and ``both``)."""
        return str(self.metrics.get("privacy_mode", "off")) in ("record", "both")

    @property
    def client_level(self) -> dict[str, Any] | None:
        """The run's client-level DP plan (modes ``client`` and ``both``), as the server logged it."""
        if str(self.metrics.get("privacy_mode", "off")) not in ("client", "both"):
            return None
        plan = self.metrics.get("client_level")
        return plan if isinstance(plan, dict) else None

    @property
    def he_on(self) -> bool:
        return str(self.metrics.get("encryption", "off")) != "off"

    @property
    def simulation(self) -> bool:
        # Only the simulation runner deals keys into the run folder.
        return (self.root / "keys" / "client").is_dir()


def run_id_for(metrics: dict[str, Any], ledger: ChainState) -> str:
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


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path}: {what} is missing (is this a fedpriv run folder?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: cannot read {what} ({exc})") from None
    if not isinstance(doc, dict):
        raise StateError(f"{path}: {what} must be a JSON object")
    return doc


def load_records(root: Path) -> RunRecords:
    """Read ``root``; raise StateError for missing files, VerificationError for a broken chain."""
    rd = RunDir(Path(root))
    metrics = _read_json(rd.metrics, "metrics.json")
    config = _read_json(rd.root / "config.json", "config.json")
    params = (
        _read_json(rd.server_params, "public HE parameters") if rd.server_params.exists() else None
    )
    audit_path = rd.root / "audit.json"
    audit = _read_json(audit_path, "audit result") if audit_path.exists() else None
    files = tuple(
        (rel, sha256_file(rd.root / rel), (rd.root / rel).stat().st_size)
        for rel in TRACKED_FILES
        if (rd.root / rel).is_file()
    )
    return RunRecords(
        root=rd.root,
        config=config,
        metrics=metrics,
        ledger=load_chain(rd.ledger, rd.root),
        egress=load_chain(rd.egress, rd.root),
        params=params,
        files=files,
        audit=audit,
    )
