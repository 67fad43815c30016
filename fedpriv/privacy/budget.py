"""Budget policy: plan sigma over the horizon, and refuse a round that would overspend."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, plan_noise_multiplier
from fedpriv.privacy.training import sample_rate, steps_per_round

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.privacy.state import ClientPrivacyState

__all__ = ["BudgetDecision", "check_budget", "noise_multiplier_for"]


def noise_multiplier_for(cfg: RunConfig, num_examples: int) -> float:
    """The sigma a client with ``num_examples`` uses: given, or planned for the whole horizon.

    The horizon assumes the client trains in every round (the worst case under client sampling).
    """
    p = cfg.privacy
    if p.noise_multiplier > 0:
        return p.noise_multiplier
    q = sample_rate(num_examples, cfg.train.batch_size)
    steps = cfg.rounds * steps_per_round(num_examples, cfg.train.batch_size, cfg.train.local_epochs)
    return plan_noise_multiplier(p.target_epsilon, p.delta, q, steps, p.accountant)


@dataclass(frozen=True)
class BudgetDecision:
    allowed: bool
    epsilon_now: float
    epsilon_after: float
    """Epsilon if this round's steps were taken (computed before training)."""
    event: DpEvent

    @property
    def reason(self) -> str:
        if self.allowed:
            return ""
        return (
            f"refused: this round would raise epsilon from {self.epsilon_now:.3f} to "
            f"{self.epsilon_after:.3f}, past the client's max_epsilon"
        )


def check_budget(
    cfg: RunConfig, state: ClientPrivacyState, num_examples: int, sigma: float | None = None
) -> BudgetDecision:
    """Would one more round of local DP-SGD keep the client within ``max_epsilon``?"""
    sigma = noise_multiplier_for(cfg, num_examples) if sigma is None else sigma
    ev = DpEvent(
        sigma,
        sample_rate(num_examples, cfg.train.batch_size),
        steps_per_round(num_examples, cfg.train.batch_size, cfg.train.local_epochs),
    )
    now = state.epsilon()
    after = opacus_epsilon([*state.history, ev], state.delta, state.accountant)
    # A small tolerance keeps a planned horizon that lands exactly on the budget from being refused.
    return BudgetDecision(after <= cfg.privacy.max_epsilon * (1 + 1e-9), now, after, ev)
