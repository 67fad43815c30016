import itertools
import math

import pytest

from fedpriv.errors import StateError
from fedpriv.privacy import (
    DpEvent,
    compress_history,
    opacus_epsilon,
    plan_noise_multiplier,
    pld_epsilon,
)

# Test vectors from ../shared/RESEARCH.md section 3 (sigma=1.0, q=0.01, delta=1e-5).
VECTORS = [(1_000, 2.101, 1.838, 1.828), (10_000, 6.713, 6.198, 6.188)]


@pytest.mark.parametrize(("steps", "rdp", "prv", "pld"), VECTORS)
def test_accountants_match_published_vectors(
    steps: int, rdp: float, prv: float, pld: float
) -> None:
    h = [DpEvent(1.0, 0.01, steps)]
    assert opacus_epsilon(h, 1e-5, "rdp") == pytest.approx(rdp, abs=0.01)
    assert opacus_epsilon(h, 1e-5, "prv") == pytest.approx(prv, abs=0.02)
    assert pld_epsilon(h, 1e-5) == pytest.approx(pld, abs=0.01)


def test_history_split_over_rounds_equals_one_block() -> None:
    split = [DpEvent(1.0, 0.01, 250)] * 4
    assert compress_history(split) == [DpEvent(1.0, 0.01, 1000)]
    assert opacus_epsilon(split, 1e-5, "prv") == pytest.approx(
        opacus_epsilon([DpEvent(1.0, 0.01, 1000)], 1e-5, "prv")
    )


def test_epsilon_is_cumulative_and_monotone() -> None:
    eps = [opacus_epsilon([DpEvent(1.1, 0.05, 40)] * r, 1e-5, "prv") for r in range(1, 5)]
    assert all(b > a for a, b in itertools.pairwise(eps))
    assert opacus_epsilon([], 1e-5) == 0.0


def test_planned_sigma_hits_the_target() -> None:
    sigma = plan_noise_multiplier(3.0, 1e-5, 0.05, 500, "prv")
    eps = opacus_epsilon([DpEvent(sigma, 0.05, 500)], 1e-5, "prv")
    assert eps <= 3.0 and eps == pytest.approx(3.0, abs=0.05)


def test_bad_events_are_rejected() -> None:
    for bad in ([0.0, 0.1, 1], [1.0, 1.5, 1], [1.0, 0.1, -1], [1.0, 0.1], "x", [True, 0.1, 3]):
        with pytest.raises(StateError):
            DpEvent.from_any(bad)
    assert math.isfinite(opacus_epsilon([DpEvent(0.5, 0.5, 10)], 1e-5, "rdp"))
