"""The epsilon tiers of "How to DP-fy ML" (Ponomareva et al., JAIR 2023, section 5.2).

One home for the tier of an epsilon: the summary states it, the HTML colours by it, ``report
show`` prints it.
"""

from __future__ import annotations

import math

__all__ = ["TIERS", "TIER_SOURCE", "epsilon_tier"]

# (tier, largest epsilon in it, what it means)
TIERS = (
    (1, 1.0, "strong formal privacy guarantees"),
    (2, 10.0, "reasonable privacy guarantees"),
    (3, math.inf, "weak to no formal privacy guarantees"),
)
TIER_SOURCE = (
    'Ponomareva et al., "How to DP-fy ML: A Practical Guide to Machine Learning with Differential'
    ' Privacy", JAIR 77 (2023), section 5.2'
)


def epsilon_tier(eps: float | str | None) -> tuple[int | None, str]:
    """The tier of an epsilon (``"inf"`` for unbounded) and its meaning.

    None (differential privacy off) has no tier: there is no formal guarantee.
    """
    if eps is None:
        return None, "no formal privacy guarantee (differential privacy was off)"
    value = math.inf if eps == "inf" else float(eps)
    for tier, bound, label in TIERS:
        if value <= bound:
            return tier, label
    return 3, TIERS[-1][2]  # pragma: no cover - the last bound is infinite
