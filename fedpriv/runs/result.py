"""What a finished run gives back to Python: :class:`RunResult`, read from its run folder."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import StateError

__all__ = ["RoundResult", "RunResult", "round_result"]


@dataclass(frozen=True)
class RoundResult:
    """One round as the run folder records it."""

    round: int
    accuracy: float | None
    """Held-out accuracy of the round's global model (decrypted and evaluated by a key holder)."""
    loss: float | None
    federated_accuracy: float | None
    """Mean accuracy the clients reported on their local test splits."""
    accepted: int
    sampled: int
    refused: int
    """Clients that refused to train (their budget would have been exceeded)."""
    failed: int
    """Replies rejected by validation, or missing (crash, timeout)."""
    bytes_up: int
    """Bytes all clients uploaded this round."""
    bytes_down: int
    seconds: float
    epsilon: Mapping[str, float]
    """Each client's cumulative record-level epsilon after the round (clients that reported one)."""


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def round_result(r: Mapping[str, Any]) -> RoundResult:
    """A :class:`RoundResult` from one entry of ``metrics.json``'s ``rounds``."""
    clients = r.get("clients", {}) or {}
    eps = {
        str(cid): float(c["epsilon"])
        for cid, c in sorted(clients.items())
        if c.get("epsilon") is not None
    }
    return RoundResult(
        round=int(r["round"]),
        accuracy=_opt_float(r.get("heldout_accuracy")),
        loss=_opt_float(r.get("heldout_loss")),
        federated_accuracy=_opt_float(r.get("federated_accuracy")),
        accepted=int(r.get("accepted", 0)),
        sampled=int(r.get("sampled", 0)),
        refused=int(r.get("refused", 0)),
        failed=int(r.get("rejected", 0)) + int(r.get("failed", 0)),
        bytes_up=int(r.get("bytes_up_total", 0) or 0),
        bytes_down=int(r.get("bytes_down_total", 0) or 0),
        seconds=float(r.get("seconds", 0.0) or 0.0),
        epsilon=MappingProxyType(eps),
    )


@dataclass(frozen=True)
class RunResult:
    """A run's outcome: per-round accuracy and bytes, epsilon per client, and where it all is.

    Build one from any run folder with :meth:`from_run_dir`.
    """

    run_dir: Path
    config: RunConfig
    rounds: tuple[RoundResult, ...]
    epsilon: Mapping[str, float]
    """Each client's cumulative record-level epsilon at the end (the last value it reported)."""
    stop_reason: str
    wall_seconds: float | None
    metrics: Mapping[str, Any]
    """The whole ``metrics.json`` (read-only view)."""

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunResult:
        """Read a run folder (``metrics.json`` and ``config.toml``).

        Raises
        ------
        StateError
            The folder holds no readable metrics.
        """
        root = Path(run_dir)
        try:
            doc = json.loads((root / "metrics.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"{root}: no metrics.json (not a fedpriv run folder)") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{root}/metrics.json: unreadable ({exc})") from None
        rounds = tuple(round_result(r) for r in doc.get("rounds", []))
        final: dict[str, float] = {}
        for r in rounds:
            final.update(r.epsilon)
        wall = doc.get("wall_seconds")
        return cls(
            run_dir=root,
            config=load_config(root / "config.toml"),
            rounds=rounds,
            epsilon=MappingProxyType(dict(sorted(final.items()))),
            stop_reason=str(doc.get("stop_reason") or ""),
            wall_seconds=None if wall is None else float(wall),
            metrics=MappingProxyType(doc),
        )

    @property
    def final_accuracy(self) -> float | None:
        """Held-out accuracy of the last evaluated round (None before any evaluation)."""
        for r in reversed(self.rounds):
            if r.accuracy is not None:
                return r.accuracy
        return None

    @property
    def accuracy(self) -> list[float | None]:
        """Held-out accuracy per round (for plotting)."""
        return [r.accuracy for r in self.rounds]

    @property
    def max_epsilon(self) -> float | None:
        """The largest cumulative epsilon any client reached (None without record-level DP)."""
        return max(self.epsilon.values()) if self.epsilon else None

    @property
    def report_html(self) -> Path:
        return self.run_dir / "privacy_report.html"

    @property
    def report_json(self) -> Path:
        return self.run_dir / "privacy_report.json"

    @property
    def model_path(self) -> Path:
        return self.run_dir / "model.safetensors"

    def __repr__(self) -> str:
        acc = self.final_accuracy
        eps = self.max_epsilon
        return (
            f"RunResult({str(self.run_dir)!r}, rounds={len(self.rounds)}, "
            f"final_accuracy={'-' if acc is None else f'{acc:.4f}'}, "
            f"max_epsilon={'-' if eps is None else f'{eps:.3f}'})"
        )
