"""Epsilon recomputation for the report, memoised per distinct history.

Clients with the same data size share a history, and verification often re-reads the same
ledger; recomputing is pure, so each (accountant, delta, history) is evaluated once per process.
"""

from __future__ import annotations

import functools

from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, pld_epsilon, pld_epsilon_bounds

__all__ = ["HistoryKey", "history_key", "opacus_eps", "pld_bounds", "pld_eps"]

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


@functools.lru_cache(maxsize=4096)
def pld_bounds(delta: float, key: HistoryKey) -> tuple[float, float]:
    """Rigorous (lower, upper) bounds on the true epsilon of ``key`` (dp-accounting PLD).

    A reported epsilon below the lower bound is under-reported whatever accountant made it.
    """
    return pld_epsilon_bounds(_events(key), delta)
