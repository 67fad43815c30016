"""Epsilon recomputation for the report, memoised per distinct history.

Clients with the same data size share a history, and verification often re-reads the same
ledger; recomputing is pure, so each (accountant, delta, history) is evaluated once per process.
"""

from __future__ import annotations

import functools

from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, pld_epsilon

__all__ = ["PLD_TOLERANCE", "HistoryKey", "history_key", "opacus_eps", "pld_eps"]

# PLD is typically a little *below* PRV (tighter); only a reported epsilon more than 2% under the
# independent PLD value counts as under-reporting (the builder flags it, verify fails it).
PLD_TOLERANCE = 0.02

HistoryKey = tuple[tuple[float, float, int], ...]


def history_key(history: list[DpEvent]) -> HistoryKey:
    return tuple((e.noise_multiplier, e.sample_rate, e.steps) for e in history)


def _events(key: HistoryKey) -> list[DpEvent]:
    return [DpEvent(s, q, n) for s, q, n in key]


@functools.lru_cache(maxsize=4096)
def opacus_eps(accountant: str, delta: float, key: HistoryKey) -> float:
    """The reporting accountant (Opacus PRV or RDP) on ``key``."""
    return opacus_epsilon(_events(key), delta, accountant)


@functools.lru_cache(maxsize=4096)
def pld_eps(delta: float, key: HistoryKey) -> float:
    """The independent accountant (dp-accounting PLD) on ``key``."""
    return pld_epsilon(_events(key), delta)
