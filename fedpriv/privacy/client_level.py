"""Client-level differential privacy under encryption (distributed discrete Gaussian).

Each sampled client clips its whole update ``new - global`` to L2 norm ``C`` and adds a *share*
of integer discrete-Gaussian noise in the quantized domain before BFV encryption (Kairouz, Liu
and Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation"). Shares are sized so that the sum over the ``k_min`` clients a round needs carries
noise of standard deviation ``z * Delta``: no party, server included, ever sees an un-noised sum.

Adjacency and sensitivity. The aggregate releases the exact number of summands (clients check it
against ``k_min``) and the server samples a fixed number ``m`` of the ``N`` clients per round, so
the mechanism is analysed under *replace-one-client* adjacency with sampling without replacement
(Wang, Balle and Kasiviswanathan 2019; dp-accounting's RDP accountant, ``REPLACE_ONE``). Replacing
one client's data moves the sum of clipped updates by at most ``2C``; stochastic rounding adds at
most ``sqrt(d)`` quantization units per client (every coordinate errs by less than one unit), so
the sensitivity in real units is ``Delta = 2 (C + sqrt(d) / s)`` with ``s`` the public
quantization scale. ``z`` is the noise multiplier relative to ``Delta``.

Two epsilons are stated. Against anyone who does not know which clients were sampled (other
clients, users of the model): the subsampled mechanism over the rounds run. Against the server,
which chose the sample: no amplification, a plain Gaussian composed over the rounds the client
took part in. The budget gate (server) and the refusal (client) use the first; the ledger and the
report carry both.

The sum of discrete Gaussians is close to, not exactly, a discrete Gaussian (Kairouz et al. bound
the gap; negligible for a share sigma of many quantization units). If fewer than ``k_min`` clients
deliver, the sum carries less noise than planned: clients then refuse the aggregate.

Noise comes from the device's :class:`~fedpriv.privacy.rng.DpRandom` (the OS CSPRNG), never from
a seed in the run's config.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpriv.errors import StateError
from fedpriv.privacy.accounting import _bisect
from fedpriv.privacy.rng import DpRandom, OsRandom

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = [
    "ClientLevelPlan",
    "client_level_epsilon",
    "client_level_epsilon_vs_server",
    "client_level_plan",
    "clip_update",
    "discrete_gaussian",
    "plan_client_noise",
    "replace_one_epsilon",
    "rounding_norm",
]


def _discrete_laplace(t: int, size: int, rng: DpRandom) -> np.ndarray:
    """Discrete Laplace with scale t: difference of two geometric variables (inverse CDF)."""
    p = 1.0 - math.exp(-1.0 / t)
    g1 = np.floor(np.log(rng.uniform(size)) / math.log1p(-p))
    g2 = np.floor(np.log(rng.uniform(size)) / math.log1p(-p))
    return (g1 - g2).astype(np.int64)


def discrete_gaussian(sigma: float, size: int, rng: DpRandom | None = None) -> np.ndarray:
    """Sample ``size`` values of the discrete Gaussian N_Z(0, sigma^2).

    Rejection sampling from a discrete Laplace proposal (Canonne, Kamath and Steinke 2020,
    Algorithm 3), vectorized; every uniform comes from ``rng`` (default: the OS CSPRNG). The
    acceptance test uses floating-point ``exp`` (the exact sampler uses Bernoulli(exp) tricks):
    the distortion is far below the statistical resolution of any test and of the accounting.
    """
    rng = rng or OsRandom()
    if sigma <= 0:
        return np.zeros(size, dtype=np.int64)
    t = math.floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        batch = max(64, int(need * 1.6))
        y = _discrete_laplace(t, batch, rng)
        accept = rng.uniform(batch) < np.exp(
            -((np.abs(y) - sigma * sigma / t) ** 2) / (2 * sigma * sigma)
        )
        good = y[accept][:need]
        out[filled : filled + good.size] = good
        filled += good.size
    return out


def clip_update(delta: np.ndarray, clip_norm: float) -> tuple[np.ndarray, bool]:
    """Scale ``delta`` to L2 norm at most ``clip_norm``; report whether it was clipped."""
    norm = float(np.linalg.norm(delta))
    if norm <= clip_norm or norm == 0.0:
        return delta, False
    return delta * (clip_norm / norm), True


@dataclass(frozen=True)
class ClientLevelPlan:
    noise_multiplier: float
    """z: std of the summed noise divided by the replace-one sensitivity ``Delta``."""
    num_clients: int
    """N: clients in the federation."""
    per_round: int
    """m: clients sampled (without replacement) per round."""
    clip_norm: float
    k_min: int
    """Number of clients whose noise shares must be summed for the full noise."""
    rounding_norm: float = 0.0
    """Bound on the L2 norm of one client's rounding error in real units (``sqrt(d) / s``)."""

    @property
    def sample_rate(self) -> float:
        """m / N."""
        return self.per_round / self.num_clients

    @property
    def sensitivity(self) -> float:
        """Replace-one L2 sensitivity of the sum, rounding included (real units)."""
        return 2.0 * (self.clip_norm + self.rounding_norm)

    @property
    def total_std(self) -> float:
        """Std (real units) of the noise in a sum of ``k_min`` shares."""
        return self.noise_multiplier * self.sensitivity

    @property
    def share_std(self) -> float:
        """Std (real units) of the noise one client adds."""
        return self.total_std / math.sqrt(self.k_min)

    @property
    def headroom(self) -> float:
        """Extra quantization range that summed noise may need (10 sigma of the total)."""
        return 10.0 * self.total_std


def rounding_norm(num_values: int, quant_scale: float) -> float:
    """Largest L2 norm of a stochastic-rounding error vector, in real units."""
    return math.sqrt(num_values) / quant_scale


@functools.lru_cache(maxsize=1024)
def _rdp_epsilon(z: float, n: int, m: int, rounds: int, delta: float) -> float:
    from dp_accounting import dp_event
    from dp_accounting.privacy_accountant import NeighboringRelation
    from dp_accounting.rdp import rdp_privacy_accountant as rdp

    acc = rdp.RdpAccountant(neighboring_relation=NeighboringRelation.REPLACE_ONE)
    if m >= n:
        acc.compose(dp_event.GaussianDpEvent(z), rounds)
    else:
        acc.compose(
            dp_event.SampledWithoutReplacementDpEvent(n, m, dp_event.GaussianDpEvent(z)), rounds
        )
    eps = float(acc.get_epsilon(delta))
    return eps if math.isfinite(eps) else math.inf


def replace_one_epsilon(
    z: float, num_clients: int, per_round: int, rounds: int, delta: float
) -> float:
    """Epsilon of ``rounds`` Gaussian rounds (noise multiplier ``z`` relative to the replace-one
    sensitivity), each on a fixed-size sample of ``per_round`` of ``num_clients`` clients drawn
    without replacement (dp-accounting RDP, ``REPLACE_ONE``). ``per_round >= num_clients``: no
    sampling (every client every round, or an adversary who knows the sample)."""
    if rounds <= 0:
        return 0.0
    return _rdp_epsilon(float(z), int(num_clients), int(per_round), int(rounds), float(delta))


def client_level_epsilon(plan: ClientLevelPlan, rounds: int, delta: float) -> float:
    """Client-level epsilon after ``rounds`` rounds, against parties who do not know the sample."""
    if rounds <= 0:
        return 0.0
    return _rdp_epsilon(plan.noise_multiplier, plan.num_clients, plan.per_round, rounds, delta)


def client_level_epsilon_vs_server(
    plan: ClientLevelPlan, participations: int, delta: float
) -> float:
    """Client-level epsilon against the server, which knows the sample: no amplification."""
    if participations <= 0:
        return 0.0
    return _rdp_epsilon(plan.noise_multiplier, 1, 1, participations, delta)


def plan_client_noise(target_epsilon: float, delta: float, n: int, m: int, rounds: int) -> float:
    """Smallest z (within 0.5% of epsilon) that keeps ``rounds`` rounds within the target."""
    if target_epsilon <= 0 or rounds <= 0:
        raise StateError(f"cannot plan client-level noise for epsilon={target_epsilon}")

    def eps(z: float) -> float:
        return _rdp_epsilon(z, n, m, rounds, delta)

    lo, hi = 0.05, 1.0
    while eps(hi) > target_epsilon:
        lo, hi = hi, hi * 4
        if hi > 1e5:
            raise StateError(f"no noise multiplier reaches client-level epsilon={target_epsilon}")
    return _bisect(eps, target_epsilon, lo, hi)


def client_level_plan(cfg: RunConfig, rounding: float = 0.0) -> ClientLevelPlan:
    """Noise multiplier (given, or planned for the whole run) and sampling for client-level DP.

    ``k_min`` is ``federation.min_train_clients`` or, by default, every sampled client: a round
    with fewer accepted updates would carry too little noise and is not used. ``rounding`` is
    :func:`rounding_norm` for the run's encryption parameters (0 when planning before they exist;
    the noise std then grows by the rounding term once it is known, epsilon does not change).
    """
    p, f = cfg.privacy, cfg.federation
    per_round = cfg.clients_per_round
    k_min = f.min_train_clients or per_round
    z = p.client_noise_multiplier
    if z <= 0:
        z = plan_client_noise(
            p.client_target_epsilon, p.client_delta, f.num_clients, per_round, cfg.rounds
        )
    return ClientLevelPlan(z, f.num_clients, per_round, p.client_clip_norm, max(1, k_min), rounding)
