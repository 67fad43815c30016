"""A client's noise plan: sigma for the whole horizon and the epsilon after every round.

Epsilon is a deterministic function of the (sigma, q, steps) history. A client that trains
with its planned sigma in k rounds has the history ``[(sigma, q, k * steps_per_round)]``
(consecutive equal entries compose into one), so its whole epsilon schedule is known the moment
the noise is planned. :func:`load_or_make_plan` computes that schedule once per client and run,
with :func:`~fedpriv.privacy.accounting.opacus_epsilon` itself, and the client keeps it in its
node state. :meth:`EpsilonPlan.prime` seeds the accountant's memo from it, so the budget check
and the signed record of every later round look up the exact value instead of recomputing it
(one PRV evaluation costs 0.1-1 s on this kind of CPU, a whole plaintext client round about
0.07 s). The values are exactly what ``opacus_epsilon`` returns for these histories, so
``fedpriv report verify`` recomputes every one of them; a history off the plan (another sigma, a
device that already trained past the horizon) is computed as before.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, remember_epsilon

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = ["EpsilonPlan", "load_or_make_plan", "plan_key"]

_FORMAT = "fedpriv.epsilon-plan/1"


def plan_key(cfg: RunConfig, num_examples: int) -> str:
    """Everything the plan depends on (a stored plan with another key is recomputed)."""
    p, t = cfg.privacy, cfg.train
    return json.dumps(
        [
            _FORMAT,
            p.noise_multiplier,
            p.target_epsilon,
            p.delta,
            p.accountant,
            cfg.rounds,
            num_examples,
            t.batch_size,
            t.local_epochs,
        ]
    )


@dataclass(frozen=True)
class EpsilonPlan:
    """Sigma and the epsilon after 1..rounds rounds of ``steps_per_round`` steps at ``sample_rate``."""

    key: str
    sigma: float
    sample_rate: float
    steps_per_round: int
    delta: float
    accountant: str
    epsilons: tuple[float, ...]

    def history(self, rounds: int) -> list[DpEvent]:
        """The compressed history after ``rounds`` planned rounds."""
        return [DpEvent(self.sigma, self.sample_rate, rounds * self.steps_per_round)]

    def prime(self) -> None:
        """Seed the accountant's memo with this schedule (values Opacus computed for it)."""
        for k, eps in enumerate(self.epsilons, start=1):
            remember_epsilon(self.history(k), self.delta, self.accountant, eps)

    def to_record(self) -> dict[str, Any]:
        """Flat form for a Flower ``ConfigRecord`` (the client's node state)."""
        return {
            "key": self.key,
            "sigma": self.sigma,
            "sample-rate": self.sample_rate,
            "steps-per-round": self.steps_per_round,
            "delta": self.delta,
            "accountant": self.accountant,
            "epsilons": list(self.epsilons),
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any], key: str) -> EpsilonPlan | None:
        """The stored plan if it is well-formed and made for ``key``, else None (recompute)."""
        try:
            if rec.get("key") != key:
                return None
            eps = tuple(float(e) for e in rec["epsilons"])
            plan = cls(
                key,
                float(rec["sigma"]),
                float(rec["sample-rate"]),
                int(rec["steps-per-round"]),
                float(rec["delta"]),
                str(rec["accountant"]),
                eps,
            )
        except (KeyError, TypeError, ValueError):
            return None
        ok = (
            math.isfinite(plan.sigma)
            and plan.sigma > 0
            and 0 < plan.sample_rate <= 1
            and plan.steps_per_round > 0
            and all(e >= 0 for e in eps)
            and all(a <= b for a, b in itertools.pairwise(eps))
        )
        return plan if ok else None


def load_or_make_plan(
    cfg: RunConfig, num_examples: int, stored: Mapping[str, Any] | None = None
) -> tuple[EpsilonPlan, bool]:
    """The client's plan: ``stored`` (its node state) when it matches, else a new one.

    Returns ``(plan, made)``; ``made`` says it was computed now and should be stored. Making a
    plan costs the noise search (when sigma is not given) plus one PRV evaluation per round,
    each cheap once the per-step RDP curve of (sigma, q) is memoized.
    """
    from fedpriv.privacy.budget import noise_multiplier_for
    from fedpriv.privacy.training import sample_rate, steps_per_round

    key = plan_key(cfg, num_examples)
    plan = EpsilonPlan.from_record(stored, key) if stored is not None else None
    if plan is not None:
        return plan, False
    p, t = cfg.privacy, cfg.train
    sigma = noise_multiplier_for(cfg, num_examples)
    q = sample_rate(num_examples, t.batch_size)
    steps = steps_per_round(num_examples, t.batch_size, t.local_epochs)
    eps = tuple(
        opacus_epsilon([DpEvent(sigma, q, k * steps)], p.delta, p.accountant)
        for k in range(1, cfg.rounds + 1)
    )
    return EpsilonPlan(key, sigma, q, steps, p.delta, p.accountant, eps), True
