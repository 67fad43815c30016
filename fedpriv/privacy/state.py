"""A client's persistent privacy state: the accountant history, never reset.

Stored as a small JSON document (no pickle) that is validated field by field on load, so a
corrupt or edited file stops the client with a clear error instead of silently restarting the
budget at zero.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError
from fedpriv.fileio import atomic_write_text
from fedpriv.privacy.accounting import ACCOUNTANTS, DpEvent, compress_history, opacus_epsilon

__all__ = ["ClientPrivacyState"]

_VERSION = 1


@dataclass(frozen=True)
class ClientPrivacyState:
    """Everything needed to recompute a client's epsilon: history, accountant, delta."""

    accountant: str
    delta: float
    history: tuple[DpEvent, ...] = field(default_factory=tuple)
    rounds_trained: tuple[int, ...] = field(default_factory=tuple)

    def epsilon(self) -> float:
        return opacus_epsilon(self.history, self.delta, self.accountant)

    @property
    def total_steps(self) -> int:
        return sum(e.steps for e in self.history)

    def with_event(self, event: DpEvent, server_round: int) -> ClientPrivacyState:
        return ClientPrivacyState(
            accountant=self.accountant,
            delta=self.delta,
            history=tuple(compress_history([*self.history, event])),
            rounds_trained=(*self.rounds_trained, server_round),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "accountant": self.accountant,
            "delta": self.delta,
            "history": [e.as_list() for e in self.history],
            "rounds_trained": list(self.rounds_trained),
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "privacy state") -> ClientPrivacyState:
        if not isinstance(d, dict):
            raise StateError(f"{source}: expected a JSON object")
        if d.get("version") != _VERSION:
            raise StateError(
                f"{source}: unsupported version {d.get('version')!r} (expected {_VERSION})"
            )
        acc = d.get("accountant")
        if acc not in ACCOUNTANTS:
            raise StateError(
                f"{source}: field 'accountant' must be one of {ACCOUNTANTS}, got {acc!r}"
            )
        delta = d.get("delta")
        if not isinstance(delta, float) or not 0 < delta < 1:
            raise StateError(f"{source}: field 'delta' must be a float in (0, 1), got {delta!r}")
        hist = d.get("history")
        if not isinstance(hist, list):
            raise StateError(f"{source}: field 'history' must be a list")
        rounds = d.get("rounds_trained", [])
        if not isinstance(rounds, list) or not all(isinstance(r, int) for r in rounds):
            raise StateError(f"{source}: field 'rounds_trained' must be a list of integers")
        try:
            events = tuple(DpEvent.from_any(h) for h in hist)
        except StateError as exc:
            raise StateError(f"{source}: {exc}") from None
        return cls(acc, delta, events, tuple(rounds))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "privacy state") -> ClientPrivacyState:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StateError(
                f"{source}: not valid JSON ({exc}); refusing to reset the budget"
            ) from None
        return cls.from_dict(d, source=source)

    def save(self, path: Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load_or_new(cls, path: Path, accountant: str, delta: float) -> ClientPrivacyState:
        """Load the state at ``path``; a missing file means a fresh client (zero spent)."""
        if not path.exists():
            return cls(accountant, delta)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateError(f"{path}: cannot read privacy state ({exc})") from None
        state = cls.from_json(text, source=str(path))
        if state.accountant != accountant or state.delta != delta:
            raise StateError(
                f"{path}: stored accountant/delta ({state.accountant}, {state.delta}) differ from the"
                f" run's ({accountant}, {delta}); mixing them would misreport epsilon"
            )
        return state
