"""Budget policy: plan sigma over the horizon, and refuse a round that would overspend."""

from __future__ import annotations

import math
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
    """This run's epsilon if the round's steps were taken (computed before training)."""
    lifetime_after: float
    """The device's lifetime epsilon (all runs on this data) after the round."""
    event: DpEvent
    max_epsilon: float = math.inf
    max_lifetime_epsilon: float = math.inf

    @property
    def reason(self) -> str:
        if self.allowed:
            return ""
        if self.epsilon_after > self.max_epsilon * (1 + _TOL):
            return (
                f"refused: this round would raise epsilon from {self.epsilon_now:.3f} to "
                f"{self.epsilon_after:.3f}, past this run's max_epsilon {self.max_epsilon:g}"
            )
        return (
            f"refused: this round would raise the device's lifetime epsilon to "
            f"{self.lifetime_after:.3f}, past its max_lifetime_epsilon {self.max_lifetime_epsilon:g}"
        )


# A small tolerance keeps a planned horizon that lands exactly on the budget from being refused.
_TOL = 1e-9


def check_budget(
    cfg: RunConfig,
    state: ClientPrivacyState,
    run_id: str,
    num_examples: int,
    sigma: float | None = None,
    *,
    max_epsilon: float | None = None,
    max_lifetime_epsilon: float = math.inf,
) -> BudgetDecision:
    """Would one more round of local DP-SGD keep the client within its budgets?

    ``max_epsilon`` (default: the run's ``privacy.max_epsilon``) caps this run's epsilon and
    ``max_lifetime_epsilon`` the device's epsilon over every run on the same data.
    """
    sigma = noise_multiplier_for(cfg, num_examples) if sigma is None else sigma
    cap = cfg.privacy.max_epsilon if max_epsilon is None else max_epsilon
    ev = DpEvent(
        sigma,
        sample_rate(num_examples, cfg.train.batch_size),
        steps_per_round(num_examples, cfg.train.batch_size, cfg.train.local_epochs),
    )
    run = state.run(run_id)
    now = opacus_epsilon(run.history, state.delta, state.accountant)
    after = opacus_epsilon([*run.history, ev], state.delta, state.accountant)
    life = opacus_epsilon([*state.history, ev], state.delta, state.accountant)
    ok = after <= cap * (1 + _TOL) and life <= max_lifetime_epsilon * (1 + _TOL)
    return BudgetDecision(ok, now, after, life, ev, cap, max_lifetime_epsilon)
