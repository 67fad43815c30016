"""A client's persistent privacy state: the accountant history and its signed ledger chain.

Stored as a small JSON document (no pickle) that is validated field by field on load, so a
corrupt or edited file stops the client with a clear error instead of silently restarting the
budget at zero.

Two scopes of history are kept:

* ``history``: every DP event on this device's data, across all runs (the lifetime budget);
* one :class:`RunState` per run id: that run's history and rounds, and the head of this
  client's chain of signed ledger records for the run (the head a data owner can export so that
  a report missing the client's latest rounds fails verification).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError
from fedpriv.fileio import atomic_write_text
from fedpriv.privacy.accounting import ACCOUNTANTS, DpEvent, compress_history, opacus_epsilon
from fedpriv.privacy.ledger import GENESIS

__all__ = ["ClientPrivacyState", "RunState"]

_VERSION = 2
_HEX = set("0123456789abcdef")


def _events(raw: Any, source: str, what: str) -> tuple[DpEvent, ...]:
    if not isinstance(raw, list):
        raise StateError(f"{source}: field {what!r} must be a list")
    try:
        return tuple(DpEvent.from_any(h) for h in raw)
    except StateError as exc:
        raise StateError(f"{source}: {exc}") from None


@dataclass(frozen=True)
class RunState:
    """One run as this client saw it: its DP history and the head of its signed record chain."""

    run_id: str
    history: tuple[DpEvent, ...] = ()
    rounds_trained: tuple[int, ...] = ()
    seq: int = 0
    """Sequence number the next ledger record of this run gets."""
    head: str = GENESIS
    """SHA-256 of this client's last ledger record in the run (``GENESIS`` before the first)."""
    head_record: str = ""
    """That record, exactly as signed (JSON text), and its signature (hex): the exportable head."""
    head_signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "history": [e.as_list() for e in self.history],
            "rounds_trained": list(self.rounds_trained),
            "seq": self.seq,
            "head": self.head,
            "head_record": self.head_record,
            "head_signature": self.head_signature,
        }

    @classmethod
    def from_dict(cls, d: Any, source: str) -> RunState:
        if not isinstance(d, dict):
            raise StateError(f"{source}: each run must be a JSON object")
        rid, seq, head = d.get("run_id"), d.get("seq"), d.get("head")
        rec, sig = d.get("head_record", ""), d.get("head_signature", "")
        rounds = d.get("rounds_trained", [])
        if not isinstance(rid, str) or not 0 < len(rid) <= 128:
            raise StateError(f"{source}: run_id must be a string of 1..128 characters")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise StateError(f"{source}: run {rid}: seq must be an integer >= 0")
        if not isinstance(head, str) or len(head) != 64 or not set(head) <= _HEX:
            raise StateError(f"{source}: run {rid}: head must be a SHA-256 hex digest")
        if not isinstance(rec, str) or not isinstance(sig, str):
            raise StateError(f"{source}: run {rid}: head_record/head_signature must be strings")
        if not isinstance(rounds, list) or not all(
            isinstance(r, int) and not isinstance(r, bool) for r in rounds
        ):
            raise StateError(f"{source}: run {rid}: rounds_trained must be a list of integers")
        hist = _events(d.get("history"), source, "history")
        return cls(rid, hist, tuple(rounds), seq, head, rec, sig)


@dataclass(frozen=True)
class ClientPrivacyState:
    """Everything needed to recompute a client's epsilon: histories, accountant, delta."""

    accountant: str
    delta: float
    history: tuple[DpEvent, ...] = field(default_factory=tuple)
    """Lifetime history: every run on this data, composed in order."""
    runs: tuple[RunState, ...] = field(default_factory=tuple)

    def epsilon(self) -> float:
        """Lifetime epsilon of this device's data (all runs)."""
        return opacus_epsilon(self.history, self.delta, self.accountant)

    @property
    def total_steps(self) -> int:
        return sum(e.steps for e in self.history)

    def run(self, run_id: str) -> RunState:
        """This client's state for ``run_id`` (empty for a run it has not taken part in)."""
        for r in self.runs:
            if r.run_id == run_id:
                return r
        return RunState(run_id)

    def run_epsilon(self, run_id: str) -> float:
        return opacus_epsilon(self.run(run_id).history, self.delta, self.accountant)

    def _with_run(self, run: RunState, history: tuple[DpEvent, ...]) -> ClientPrivacyState:
        others = tuple(r for r in self.runs if r.run_id != run.run_id)
        return ClientPrivacyState(self.accountant, self.delta, history, (*others, run))

    def with_event(self, event: DpEvent, server_round: int, run_id: str) -> ClientPrivacyState:
        """Charge ``event`` to both the run and the lifetime history."""
        run = self.run(run_id)
        run = replace(
            run,
            history=tuple(compress_history([*run.history, event])),
            rounds_trained=(*run.rounds_trained, server_round),
        )
        return self._with_run(run, tuple(compress_history([*self.history, event])))

    def with_charge(self, event: DpEvent, run_id: str) -> ClientPrivacyState:
        """Charge ``event`` to the run and the lifetime history without a round taken part in
        (distributed DP: an aggregate released with fewer noise shares than planned)."""
        run = self.run(run_id)
        run = replace(run, history=tuple(compress_history([*run.history, event])))
        return self._with_run(run, tuple(compress_history([*self.history, event])))

    def with_participation(self, run_id: str, server_round: int) -> ClientPrivacyState:
        """Note a round this client took part in without a record-level DP event."""
        run = self.run(run_id)
        run = replace(run, rounds_trained=(*run.rounds_trained, server_round))
        return self._with_run(run, self.history)

    def with_record(
        self, run_id: str, record_json: str, digest: str, signature_hex: str
    ) -> ClientPrivacyState:
        """Advance this run's ledger chain past a record this client just signed."""
        run = self.run(run_id)
        run = replace(
            run,
            seq=run.seq + 1,
            head=digest,
            head_record=record_json,
            head_signature=signature_hex,
        )
        return self._with_run(run, self.history)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _VERSION,
            "accountant": self.accountant,
            "delta": self.delta,
            "history": [e.as_list() for e in self.history],
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "privacy state") -> ClientPrivacyState:
        if not isinstance(d, dict):
            raise StateError(f"{source}: expected a JSON object")
        version = d.get("version")
        if version not in (1, _VERSION):
            raise StateError(
                f"{source}: unsupported version {version!r} (expected {_VERSION}); "
                "refusing to reset the budget"
            )
        acc = d.get("accountant")
        if acc not in ACCOUNTANTS:
            raise StateError(
                f"{source}: field 'accountant' must be one of {ACCOUNTANTS}, got {acc!r}"
            )
        delta = d.get("delta")
        if not isinstance(delta, float) or not 0 < delta < 1:
            raise StateError(f"{source}: field 'delta' must be a float in (0, 1), got {delta!r}")
        history = _events(d.get("history"), source, "history")
        if version == 1:
            # Before per-run chains: the whole history stays charged as the lifetime budget.
            return cls(acc, delta, history, ())
        raw_runs = d.get("runs")
        if not isinstance(raw_runs, list):
            raise StateError(f"{source}: field 'runs' must be a list")
        runs = tuple(RunState.from_dict(r, source) for r in raw_runs)
        if len({r.run_id for r in runs}) != len(runs):
            raise StateError(f"{source}: a run id appears twice")
        lifetime = sum(e.steps for e in history)
        if any(sum(e.steps for e in r.history) > lifetime for r in runs):
            raise StateError(f"{source}: a run's history exceeds the lifetime history (edited?)")
        return cls(acc, delta, history, runs)

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
