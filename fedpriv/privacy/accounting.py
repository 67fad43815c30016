"""Privacy accounting over a stored (noise multiplier, sample rate, steps) history.

The history is the single source of truth for a client's spent budget: Opacus' accountants
(PRV by default, RDP available) compute the reported epsilon from it, and dp-accounting's PLD
accountant recomputes it independently for verification. GDP is deliberately not offered: it
under-reports epsilon.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError

__all__ = [
    "ACCOUNTANTS",
    "DpEvent",
    "clear_caches",
    "compress_history",
    "opacus_epsilon",
    "plan_noise_multiplier",
    "pld_epsilon",
    "pld_epsilon_bounds",
    "remember_epsilon",
]

ACCOUNTANTS = ("prv", "rdp")


@dataclass(frozen=True)
class DpEvent:
    """``steps`` Poisson-subsampled Gaussian steps with one (sigma, q): one ledger history entry."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise StateError(
                f"DP event: noise_multiplier must be > 0, got {self.noise_multiplier!r}"
            )
        if not (0 < self.sample_rate <= 1):
            raise StateError(f"DP event: sample_rate must be in (0, 1], got {self.sample_rate!r}")
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise StateError(f"DP event: steps must be an integer >= 0, got {self.steps!r}")

    def as_list(self) -> list[float | int]:
        return [self.noise_multiplier, self.sample_rate, self.steps]

    @classmethod
    def from_any(cls, item: Any) -> DpEvent:
        """Parse ``[sigma, q, steps]`` or ``{"noise_multiplier":..., ...}`` from stored state."""
        if isinstance(item, DpEvent):
            return item
        if isinstance(item, dict):
            item = [item.get("noise_multiplier"), item.get("sample_rate"), item.get("steps")]
        if not isinstance(item, (list, tuple)) or len(item) != 3:
            raise StateError(f"DP history entry must be [sigma, q, steps], got {item!r}")
        sigma, q, steps = item
        if isinstance(steps, float) and steps.is_integer():
            steps = int(steps)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (sigma, q)):
            raise StateError(f"DP history entry must hold numbers, got {item!r}")
        return cls(float(sigma), float(q), steps)


def compress_history(history: Iterable[DpEvent]) -> list[DpEvent]:
    """Merge consecutive entries with equal (sigma, q), as Opacus does; drop zero-step entries."""
    out: list[DpEvent] = []
    for ev in history:
        if ev.steps == 0:
            continue
        if (
            out
            and out[-1].noise_multiplier == ev.noise_multiplier
            and out[-1].sample_rate == ev.sample_rate
        ):
            out[-1] = DpEvent(ev.noise_multiplier, ev.sample_rate, out[-1].steps + ev.steps)
        else:
            out.append(ev)
    return out


def _opacus_accountant(name: str, history: Sequence[DpEvent]) -> Any:
    from opacus.accountants import create_accountant

    if name not in ACCOUNTANTS:
        raise StateError(f"unknown accountant {name!r} (use one of {', '.join(ACCOUNTANTS)})")
    _install_rdp_memo()
    acc = create_accountant(mechanism=name)
    acc.history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in compress_history(history)]
    return acc


def opacus_epsilon(history: Sequence[DpEvent], delta: float, accountant: str = "prv") -> float:
    """Cumulative epsilon of ``history`` at ``delta`` with an Opacus accountant (0 if empty).

    Results are memoized per process: a PRV evaluation costs about 0.75 s on one core, and a
    client asks for the same history's epsilon several times per round (budget check before
    training, metric after it, next round's starting point). ``benchmarks/round.py`` measured
    this accounting at 90% of a DP round before the cache. A client's planned schedule
    (:func:`remember_epsilon`, :mod:`fedpriv.privacy.plan`) answers without computing.
    """
    hist = compress_history(history)
    if not hist:
        return 0.0
    key = (tuple(hist), float(delta), accountant)
    with _planned_lock:
        known = _planned.get(key)
    if known is not None:
        return known
    return _opacus_epsilon(*key)


# Epsilons a client computed ahead (its planned schedule), by (history, delta, accountant).
_PLANNED_MAX = 4096
_planned: dict[tuple[tuple[DpEvent, ...], float, str], float] = {}
_planned_lock = threading.Lock()


def remember_epsilon(
    history: Sequence[DpEvent], delta: float, accountant: str, epsilon: float
) -> None:
    """Record the epsilon that :func:`opacus_epsilon` gave (in this process or, stored, earlier
    on this device) for ``history``: a planned schedule (:mod:`fedpriv.privacy.plan`)."""
    hist = compress_history(history)
    if not hist or not (isinstance(epsilon, float) and epsilon >= 0):
        return
    with _planned_lock:
        if len(_planned) >= _PLANNED_MAX:
            _planned.clear()
        _planned[(tuple(hist), float(delta), accountant)] = epsilon


def clear_caches() -> None:
    """Forget memoized and planned epsilons and noise plans (benchmarks: a fresh process)."""
    with _planned_lock:
        _planned.clear()
    _opacus_epsilon.cache_clear()
    plan_noise_multiplier.cache_clear()


_rdp_memo_installed = False


def _install_rdp_memo() -> None:
    """Memoize Opacus' per-step RDP of the subsampled Gaussian, a pure function of (q, sigma, order).

    Both accountants spend most of their time there: RDP sums it over the history, and PRV
    sizes its discretisation domain from RDP bounds (``compute_safe_domain_size``), about 90% of
    a PRV evaluation on this CPU. It does not depend on the number of steps, so once a client's
    (sigma, q) is known every later epsilon costs only PRV's discretisation and FFT. The function
    is pure: results are bit-identical (``tests/unit/test_accounting.py`` checks it).
    """
    global _rdp_memo_installed
    if _rdp_memo_installed:
        return
    from opacus.accountants.analysis import rdp

    if not getattr(rdp._compute_rdp, "_fedpriv_memo", False):
        memo = functools.lru_cache(maxsize=1 << 16)(rdp._compute_rdp)
        memo._fedpriv_memo = True  # type: ignore[attr-defined]
        rdp._compute_rdp = memo
    _rdp_memo_installed = True


@functools.lru_cache(maxsize=4096)
def _opacus_epsilon(hist: tuple[DpEvent, ...], delta: float, accountant: str) -> float:
    memo = os.environ.get(MEMO_ENV, "")
    if memo:
        return _shared_memo(Path(memo), hist, delta, accountant)
    return _compute_opacus_epsilon(hist, delta, accountant)


def _compute_opacus_epsilon(hist: tuple[DpEvent, ...], delta: float, accountant: str) -> float:
    acc = _opacus_accountant(accountant, hist)
    with warnings.catch_warnings():
        # PRV warns (and may return inf) far beyond any sane budget; inf is the honest answer.
        warnings.simplefilter("ignore")
        eps = float(acc.get_epsilon(delta=delta))
    return eps if math.isfinite(eps) else math.inf


MEMO_ENV = "FEDPRIV_ACCOUNTANT_MEMO"
"""A folder shared by the processes of one simulation (set by the runner): virtual devices on one
machine then compute each (history, delta, accountant) once between them. The value is a pure
function of public inputs; a device in a deployment computes its own, and ``report verify``
recomputes every value independently."""


def _shared_memo(root: Path, hist: tuple[DpEvent, ...], delta: float, accountant: str) -> float:
    import fcntl

    key = [accountant, delta, [e.as_list() for e in hist]]
    name = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    path = root / f"{name}.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        with open(root / f"{name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the first process computes, the others wait
            try:
                doc = json.loads(path.read_text(encoding="utf-8"))
                if doc.get("key") == key and isinstance(doc.get("epsilon"), float):
                    return float(doc["epsilon"])
            except (OSError, ValueError):
                pass
            eps = _compute_opacus_epsilon(hist, delta, accountant)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "epsilon": eps}), encoding="utf-8")
            os.replace(tmp, path)
            return eps
    except OSError:
        return _compute_opacus_epsilon(hist, delta, accountant)


def pld_epsilon(history: Sequence[DpEvent], delta: float) -> float:
    """Independent recomputation with Google's dp-accounting PLD accountant."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    hist = compress_history(history)
    if not hist:
        return 0.0
    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-4)
    for ev in hist:
        acc.compose(
            dp_event.SelfComposedDpEvent(
                dp_event.PoissonSampledDpEvent(
                    ev.sample_rate, dp_event.GaussianDpEvent(ev.noise_multiplier)
                ),
                ev.steps,
            )
        )
    return float(acc.get_epsilon(delta))


def pld_epsilon_bounds(
    history: Sequence[DpEvent], delta: float, interval: float = 1e-4
) -> tuple[float, float]:
    """Rigorous lower and upper bounds on the true epsilon of ``history`` (dp-accounting PLD).

    The privacy loss distribution is discretised once rounding down (an *optimistic* PLD, whose
    epsilon never exceeds the true one) and once rounding up (a *pessimistic* PLD, never below
    it); truncated tails are dropped resp. sent to infinity. A reported epsilon below the lower
    bound is under-reported, whatever accountant produced it: that is the whole tolerance
    ``fedpriv report verify`` allows (the discretisation error of the PLD itself, shrinking with
    ``interval``).
    """
    from dp_accounting.pld import privacy_loss_distribution as pld

    hist = compress_history(history)
    if not hist:
        return (0.0, 0.0)
    total = None
    for ev in hist:
        one = pld.from_gaussian_mechanism(
            standard_deviation=ev.noise_multiplier,
            sampling_prob=ev.sample_rate,
            pessimistic_estimate=False,
            use_connect_dots=False,  # connect-the-dots is pessimistic only
            value_discretization_interval=interval,
        ).self_compose(ev.steps)
        total = one if total is None else total.compose(one)
    assert total is not None
    return (float(total.get_epsilon_for_delta(delta)), pld_epsilon(hist, delta))


@functools.lru_cache(maxsize=256)
def plan_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "prv"
) -> float:
    """Smallest sigma (within 0.5% of epsilon) such that ``steps`` steps at ``sample_rate`` stay
    within ``target_epsilon``, by a bracketed root search on log(sigma) with the reporting
    accountant itself.

    Plan over the whole horizon (rounds x local steps): Opacus' ``make_private_with_epsilon``
    would plan one round at a time and ignore what was already spent. Each PRV evaluation costs
    ~0.3 s, so this search (regula falsi: 5-9 evaluations, half of what bisection took)
    replaces Opacus' slower linear search.
    """
    if target_epsilon <= 0 or steps <= 0:
        raise StateError(f"cannot plan noise for epsilon={target_epsilon}, steps={steps}")

    def eps(sigma: float, acc: str = accountant) -> float:
        return opacus_epsilon([DpEvent(sigma, sample_rate, steps)], delta, acc)

    if accountant == "prv":
        # RDP over-estimates epsilon and is ~5x cheaper: its answer bounds the search from above.
        hi = plan_noise_multiplier(target_epsilon, delta, sample_rate, steps, "rdp")
        return _bisect(eps, target_epsilon, hi * 0.85, hi)
    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 4
        if hi > 1e4:
            raise StateError(
                f"no noise multiplier reaches epsilon={target_epsilon} for q={sample_rate}, steps={steps}"
            )
    return _bisect(eps, target_epsilon, lo, hi)


def _bisect(eps: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Smallest sigma in [lo, hi] (eps(hi) <= target) found to within 0.5% of the target.

    Regula falsi (Illinois variant) on log(eps) against log(sigma), where epsilon is nearly a
    straight line, so a few evaluations suffice (each costs a PRV or RDP evaluation); the
    bracket always holds eps(lo) > target >= eps(hi) and the answer is its feasible end.
    """
    e_lo = eps(lo)
    if e_lo <= target:
        return lo
    e_hi = eps(hi)
    if e_hi > target:  # the caller's upper end was not feasible after all
        return hi
    x0, x1, best = math.log(lo), math.log(hi), hi
    f0, f1 = _gap(e_lo, target), _gap(e_hi, target)
    side = 0
    for _ in range(40):
        if e_hi >= target * 0.995 or x1 - x0 < 5e-4:
            break
        x = x1 - f1 * (x1 - x0) / (f1 - f0)
        x = min(max(x, x0 + 0.01 * (x1 - x0)), x1 - 0.01 * (x1 - x0))  # stay inside
        sigma = math.exp(x)
        e = eps(sigma)
        f = _gap(e, target)
        if e > target:
            x0, f0 = x, f
            if side == -1:
                f1 /= 2  # Illinois: the end kept twice in a row is pulled in
            side = -1
        else:
            x1, f1, e_hi, best = x, f, e, sigma
            if side == 1:
                f0 /= 2
            side = 1
    return best


def _gap(e: float, target: float) -> float:
    return (math.log(e) if 0 < e < math.inf else 50.0) - math.log(target)
