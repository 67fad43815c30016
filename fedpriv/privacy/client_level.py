"""Client-level differential privacy under encryption (distributed discrete Gaussian).

Each client clips its whole update ``new - global`` to L2 norm ``C`` and adds a *share* of
integer discrete-Gaussian noise in the quantized domain before BFV encryption (Kairouz, Liu and
Steinke 2021, "The Distributed Discrete Gaussian Mechanism for Federated Learning with Secure
Aggregation"). Shares are sized so that the sum over the ``k_min`` clients the round needs carries
noise of standard deviation ``z * C``: no party, server included, ever sees an un-noised sum.

Accounting treats each round as one Poisson-subsampled Gaussian step with sampling rate
``q = clients per round / clients`` and noise multiplier ``z`` (add/remove-one-client adjacency).
Two approximations are stated in the report: fedpriv samples a fixed-size set of clients per
round (not Poisson), and the sum of discrete Gaussians is close to, not exactly, a discrete
Gaussian (Kairouz et al. bound the gap; it is negligible for sigma >> 1 quantization unit).
If fewer than ``k_min`` clients deliver, the sum carries *less* noise than planned: the round is
then below the minimum and its aggregate is not used.

Noise comes from the operating system's CSPRNG (``os.urandom``), not from numpy's or torch's
default generators.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fedpriv.privacy.accounting import DpEvent, opacus_epsilon, plan_noise_multiplier

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = [
    "ClientLevelPlan",
    "client_level_epsilon",
    "client_level_plan",
    "clip_update",
    "csprng_uniform",
    "discrete_gaussian",
]


def csprng_uniform(size: int) -> np.ndarray:
    """Uniform floats in (0, 1) with 53 random bits each, from ``os.urandom``."""
    raw = np.frombuffer(os.urandom(8 * size), dtype=np.uint64)
    return ((raw >> np.uint64(11)).astype(np.float64) + 0.5) / float(1 << 53)


def _discrete_laplace(t: int, size: int) -> np.ndarray:
    """Discrete Laplace with scale t: difference of two geometric variables (inverse CDF)."""
    p = 1.0 - math.exp(-1.0 / t)
    g1 = np.floor(np.log(csprng_uniform(size)) / math.log1p(-p))
    g2 = np.floor(np.log(csprng_uniform(size)) / math.log1p(-p))
    return (g1 - g2).astype(np.int64)


def discrete_gaussian(sigma: float, size: int) -> np.ndarray:
    """Sample ``size`` values of the discrete Gaussian N_Z(0, sigma^2).

    Rejection sampling from a discrete Laplace proposal (Canonne, Kamath and Steinke 2020,
    Algorithm 3), vectorized; uniforms come from the OS CSPRNG. The acceptance test uses
    floating-point ``exp`` (the exact sampler uses Bernoulli(exp) tricks): the distortion is
    far below the statistical resolution of any test and of the accounting.
    """
    if sigma <= 0:
        return np.zeros(size, dtype=np.int64)
    t = math.floor(sigma) + 1
    out = np.empty(size, dtype=np.int64)
    filled = 0
    while filled < size:
        need = size - filled
        batch = max(64, int(need * 1.6))
        y = _discrete_laplace(t, batch)
        accept = csprng_uniform(batch) < np.exp(
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
    """z: std of the summed noise divided by the clip norm."""
    sample_rate: float
    """q: clients per round / clients."""
    clip_norm: float
    k_min: int
    """Number of clients whose noise shares must be summed for the full noise."""

    @property
    def share_std(self) -> float:
        """Std (real units) of the noise one client adds."""
        return self.noise_multiplier * self.clip_norm / math.sqrt(self.k_min)

    @property
    def headroom(self) -> float:
        """Extra quantization range that summed noise may need (10 sigma of the total)."""
        return 10.0 * self.noise_multiplier * self.clip_norm


def client_level_plan(cfg: RunConfig) -> ClientLevelPlan:
    """Noise multiplier (given, or planned for the whole run) and sampling for client-level DP.

    ``k_min`` is ``federation.min_train_clients`` or, by default, every sampled client: a round
    with fewer accepted updates would carry too little noise and is not used.
    """
    p, f = cfg.privacy, cfg.federation
    per_round = cfg.clients_per_round
    k_min = f.min_train_clients or per_round
    q = per_round / f.num_clients
    z = p.client_noise_multiplier
    if z <= 0:
        z = plan_noise_multiplier(
            p.client_target_epsilon, p.client_delta, q, cfg.rounds, p.accountant
        )
    return ClientLevelPlan(z, q, p.client_clip_norm, max(1, k_min))


def client_level_epsilon(
    plan: ClientLevelPlan, rounds: int, delta: float, accountant: str
) -> float:
    """Client-level epsilon after ``rounds`` aggregation rounds."""
    if rounds <= 0:
        return 0.0
    return opacus_epsilon(
        [DpEvent(plan.noise_multiplier, plan.sample_rate, rounds)], delta, accountant
    )
