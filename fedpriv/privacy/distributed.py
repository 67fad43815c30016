"""Distributed record-level DP: the encrypted sum carries the noise of central DP-SGD.

One round is one DP-SGD step over the union of all clients' data (docs/distributed-dp.md):

1. every client draws a Poisson batch at the common rate ``q`` from the device's CSPRNG, computes
   per-example gradients with Opacus (``GradSampleModule``, no Opacus noise), clips each to ``C``
   and sums them;
2. it quantizes the sum (stochastic rounding, uniforms from the CSPRNG) and adds a discrete
   Gaussian *share* of the noise in the quantized domain, sized so that the shares of ``k_min``
   clients together carry noise multiplier ``sigma`` (Kairouz, Liu and Steinke 2021, DDGauss);
3. the server adds the BFV ciphertexts; clients decrypt the sum, check its count slot (at least
   ``k_min`` summands), divide by the *expected* batch ``q N`` (a fixed, public denominator) and
   take the same optimizer step (momentum and the learning-rate schedule are post-processing), so
   every client holds the same model.

Sensitivity. Values are encoded in units of ``C``: one record moves its client's sum by at most
1 in L2 norm. Clipping each coordinate to ``[-R, R]`` (the public value range) is a contraction.
The codec then casts to float32 (round to nearest: each coordinate of two neighbouring sums may
move apart by up to ``2^-23 R`` more), scales by the public quantization scale ``s`` in float64
(at most 1/8 unit each side) and rounds stochastically; coupled on the same uniforms the two
roundings differ by less than one unit per coordinate. So the L2 sensitivity of the quantized sum
is at most ``s (1 + sqrt(d) R 2^-23) + 1.25 sqrt(d)`` units (``d`` values), and the noise is
sized for that.

Accounting. The sum of ``k`` discrete Gaussians of variance ``v`` each, for an L2 sensitivity
``Delta``, is ``rho``-zCDP with ``sqrt(2 rho) = sqrt(Delta^2 / (k v) + tau d / 2)``,
``tau = 10 sum_{j=1}^{k-1} exp(-2 pi^2 v j / (j + 1))`` (Kairouz, Liu and Steinke 2021, Thm. 1).
``sigma_effective = 1 / sqrt(...)`` is the noise multiplier of the Gaussian with the same
guarantee; the run's central accountant composes Poisson-subsampled Gaussian steps
``(sigma_effective, q, 1)``, one per round, exactly as central DP-SGD would. With shares of many
quantization units ``tau`` underflows to 0 and ``sigma_effective`` equals the planned sigma up to
the rounding term, which is in the sensitivity.

Trust. Against the server and anyone who sees only aggregates the run's epsilon is that central
epsilon. A coalition of the server and ``c`` clients knows their own shares: for ``c`` below the
custody's decryption threshold it sees the sum with ``k_min - c`` shares of noise
(``sigma * sqrt((k_min - c) / k_min)``); from the threshold on (shared key: one client) it can
decrypt individual updates, each carrying one share (``sigma / sqrt(k_min)``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpriv.errors import StateError
from fedpriv.privacy.accounting import DpEvent, opacus_epsilon
from fedpriv.privacy.rng import DpRandom

if TYPE_CHECKING:
    import torch

    from fedpriv.config import RunConfig, TrainConfig

__all__ = [
    "CUSTODY_NONE",
    "CUSTODY_SHARED",
    "CUSTODY_THRESHOLD",
    "MIN_SCALE_PER_ROOT",
    "DistributedPlan",
    "ModelReplay",
    "OptimizerState",
    "apply_aggregate",
    "clip_coordinates",
    "clipped_gradient_sum",
    "coalition_epsilons",
    "coalition_sigma",
    "custody_of",
    "ddgauss_tau",
    "distributed_plan",
    "headroom",
    "k_min_of",
    "learning_rate",
    "max_rounds_within",
    "noise_multiplier_for_run",
    "poisson_batch",
    "server_setup",
    "sgd_step",
    "share_std_for",
    "sigma_effective",
]

MIN_SCALE_PER_ROOT = 125.0
"""Keys for distributed DP get a quantization scale of at least this times sqrt(d): rounding then
adds at most 1% (1.25 sqrt(d) / s) to the sensitivity."""
CUSTODY_SHARED = "shared-key"
"""Every client holds the whole HE secret: the server and one client can decrypt any update."""
CUSTODY_THRESHOLD = "threshold"
"""T of n key shares are needed to decrypt: fewer colluding clients see only aggregates."""
CUSTODY_NONE = "none"
"""No encryption: the server sees every update."""


# --------------------------------------------------------------------------- DDGauss


def ddgauss_tau(share_std: float, k: int) -> float:
    """KLS21's ``tau``: how far a sum of ``k`` discrete Gaussians is from a discrete Gaussian."""
    v = share_std * share_std
    return 10.0 * sum(math.exp(-2.0 * math.pi**2 * v * j / (j + 1)) for j in range(1, k))


def sigma_effective(share_std: float, k: int, sensitivity: float, num_values: int) -> float:
    """Noise multiplier of the Gaussian with the same zCDP guarantee as ``k`` summed shares.

    ``share_std`` and ``sensitivity`` (L2) are in the same (quantization) units.
    """
    if share_std <= 0 or k < 1 or sensitivity <= 0:
        raise StateError(
            f"DDGauss: need share std > 0, k >= 1 and sensitivity > 0 (got {share_std}, {k}, "
            f"{sensitivity})"
        )
    inv2 = sensitivity**2 / (k * share_std**2) + ddgauss_tau(share_std, k) * num_values / 2.0
    return 1.0 / math.sqrt(inv2)


def share_std_for(sigma: float, k: int, sensitivity: float, num_values: int) -> float:
    """Smallest per-client share std whose ``k`` shares reach ``sigma_effective >= sigma``."""
    if sigma <= 0:
        raise StateError(f"DDGauss: the noise multiplier must be > 0, got {sigma}")
    lo = sigma * sensitivity / math.sqrt(k)  # the continuous answer: never enough when tau > 0
    if sigma_effective(lo, k, sensitivity, num_values) >= sigma:
        return lo
    hi = lo
    for _ in range(200):
        hi *= 2.0
        if sigma_effective(hi, k, sensitivity, num_values) >= sigma:
            break
    else:
        raise StateError(f"DDGauss: no share std reaches sigma {sigma} (k={k})")
    while hi / lo > 1 + 1e-9:  # bisection: the smallest std that reaches sigma
        mid = math.sqrt(lo * hi)
        if sigma_effective(mid, k, sensitivity, num_values) >= sigma:
            hi = mid
        else:
            lo = mid
    return hi


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class DistributedPlan:
    """Everything public about one distributed run's mechanism (the same on every device)."""

    noise_multiplier: float
    """The planned sigma: the summed noise of ``k_min`` shares reaches at least this."""
    sample_rate: float
    """q = expected batch / N."""
    total_records: int
    """N, the public number of training records over all clients."""
    clip_norm: float
    k_min: int
    num_values: int
    quant_scale: float
    """s: quantization units per unit of ``C``."""
    value_range: float
    """R: each coordinate of a client's clipped sum (units of C) is clipped to [-R, R]."""
    custody: str = CUSTODY_SHARED
    decrypt_threshold: int = 1
    """Smallest number of colluding clients that can decrypt an individual update (0: none
    needed, the server reads updates; 1: shared key; T: threshold custody)."""

    @property
    def expected_batch(self) -> float:
        """q N: the fixed denominator of the noisy gradient."""
        return self.sample_rate * self.total_records

    @property
    def rounding_norm(self) -> float:
        """What encoding may add to the L2 distance of two neighbouring sums, in units of C:
        float32 casting (``sqrt(d) R 2^-23``) and rounding (``1.25 sqrt(d) / s``)."""
        root = math.sqrt(self.num_values)
        return root * self.value_range * 2.0**-23 + 1.25 * root / self.quant_scale

    @property
    def sensitivity_units(self) -> float:
        """Add/remove-one-record L2 sensitivity of the quantized sum, in quantization units."""
        return self.quant_scale * (1.0 + self.rounding_norm)

    @property
    def share_std_units(self) -> float:
        """Std of one client's discrete-Gaussian share, in quantization units."""
        return _share_std(
            self.noise_multiplier, self.k_min, self.sensitivity_units, self.num_values
        )

    @property
    def sigma_effective(self) -> float:
        """Noise multiplier the accountant is given (KLS21, rounding in the sensitivity)."""
        return _sigma_eff(self.share_std_units, self.k_min, self.sensitivity_units, self.num_values)

    @property
    def tau(self) -> float:
        return ddgauss_tau(self.share_std_units, self.k_min)

    @property
    def noise_std_gradient(self) -> float:
        """Std of the noise on each coordinate of the averaged gradient (real units)."""
        total = self.share_std_units * math.sqrt(self.k_min) / self.quant_scale
        return total * self.clip_norm / self.expected_batch

    def event(self) -> DpEvent:
        """The central event every client charges per round."""
        return DpEvent(self.sigma_effective, self.sample_rate, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "noise_multiplier": self.noise_multiplier,
            "sigma_effective": self.sigma_effective,
            "sample_rate": self.sample_rate,
            "total_records": self.total_records,
            "expected_batch": self.expected_batch,
            "clip_norm": self.clip_norm,
            "k_min": self.k_min,
            "num_values": self.num_values,
            "quant_scale": self.quant_scale,
            "value_range": self.value_range,
            "rounding_norm": self.rounding_norm,
            "sensitivity_units": self.sensitivity_units,
            "share_std_units": self.share_std_units,
            "tau": self.tau,
            "custody": self.custody,
            "decrypt_threshold": self.decrypt_threshold,
        }


@functools.lru_cache(maxsize=256)
def _share_std(sigma: float, k: int, sens: float, d: int) -> float:
    return share_std_for(sigma, k, sens, d)


@functools.lru_cache(maxsize=256)
def _sigma_eff(std: float, k: int, sens: float, d: int) -> float:
    return sigma_effective(std, k, sens, d)


def noise_multiplier_for_run(cfg: RunConfig) -> float:
    """The planned sigma: given, or the smallest reaching ``target_epsilon`` after all rounds."""
    from fedpriv.privacy.accounting import plan_noise_multiplier

    p = cfg.privacy
    if p.noise_multiplier > 0:
        return p.noise_multiplier
    return plan_noise_multiplier(
        p.target_epsilon, p.delta, _sample_rate(cfg), cfg.rounds, p.accountant
    )


def _sample_rate(cfg: RunConfig) -> float:
    n = cfg.privacy.total_records
    if n <= 0:
        raise StateError(
            "privacy.total_records is 0: distributed DP needs N, the public number of training"
            " records over all clients (the simulation runner fills it in)"
        )
    return min(1.0, cfg.train.batch_size / n)


def k_min_of(cfg: RunConfig) -> int:
    """Clients whose shares make the full noise: ``min_train_clients``, by default all clients."""
    return max(1, cfg.federation.min_train_clients or cfg.federation.num_clients)


def custody_of(params: Any) -> tuple[str, int]:
    """(custody, smallest colluding-client count that can decrypt one update) for ``params``."""
    scheme = str(getattr(params, "scheme", "off"))
    threshold = getattr(params, "threshold", None)
    if isinstance(threshold, int) and not isinstance(threshold, bool):
        return CUSTODY_THRESHOLD, threshold
    if scheme == "off":
        return CUSTODY_NONE, 0
    return CUSTODY_SHARED, 1


def headroom(cfg: RunConfig) -> float:
    """Extra value range (units of C) for the summed noise: 10 standard deviations, planned
    with the rounding term budgeted at the clip norm (the scale is not known before dealing)."""
    return 10.0 * noise_multiplier_for_run(cfg) * 2.0


def distributed_plan(cfg: RunConfig, params: Any) -> DistributedPlan:
    """The run's plan for the given public parameters (quantization scale, custody)."""
    p = cfg.privacy
    custody, threshold = custody_of(params)
    return DistributedPlan(
        noise_multiplier=noise_multiplier_for_run(cfg),
        sample_rate=_sample_rate(cfg),
        total_records=p.total_records,
        clip_norm=p.max_grad_norm,
        k_min=k_min_of(cfg),
        num_values=int(params.num_values),
        quant_scale=float(params.quant_scale),
        value_range=cfg.encryption.value_range,
        custody=custody,
        decrypt_threshold=threshold,
    )


# --------------------------------------------------------------------------- epsilon


def coalition_sigma(plan_sigma: float, k_min: int, c: int, decrypt_threshold: int) -> float:
    """Noise multiplier a coalition of the server and ``c`` clients faces.

    Below the decryption threshold it sees only sums and removes its ``c`` shares; from the
    threshold on (a shared key: from ``c = 1``; no encryption: always) it reads individual
    updates, each with one share.
    """
    if not 0 <= c < k_min:
        raise StateError(f"coalition size must be in 0..{k_min - 1}, got {c}")
    if c >= decrypt_threshold:
        return plan_sigma / math.sqrt(k_min)
    return plan_sigma * math.sqrt((k_min - c) / k_min)


def coalition_epsilons(
    history: Sequence[DpEvent],
    delta: float,
    k_min: int,
    decrypt_threshold: int,
    sizes: Sequence[int] | None = None,
    accountant: str = "prv",
) -> list[tuple[int, float]]:
    """Epsilon of ``history`` against coalitions of the server and ``c`` clients.

    Every event's noise multiplier is scaled as :func:`coalition_sigma` says (the ratio does not
    depend on sigma). ``sizes`` default: ``0, 1, 2, 5, 10, 20, 50, ...`` below ``k_min``, plus
    ``T - 1`` and ``T`` where the decryption threshold ``T`` lies in range. PRV may give up at
    very small noise multipliers; RDP (an upper bound) answers then.
    """
    if sizes is None:
        cand = {0}
        x = 1
        while x < k_min:
            cand.update(v for v in (x, 2 * x, 5 * x) if v < k_min)
            x *= 10
        cand.update(v for v in (decrypt_threshold - 1, decrypt_threshold) if 0 <= v < k_min)
        sizes = sorted(cand)
    out = []
    for c in sizes:
        f = coalition_sigma(1.0, k_min, c, decrypt_threshold)
        hist = [DpEvent(e.noise_multiplier * f, e.sample_rate, e.steps) for e in history]
        eps = opacus_epsilon(hist, delta, accountant)
        if not math.isfinite(eps) and accountant != "rdp":
            eps = opacus_epsilon(hist, delta, "rdp")
        out.append((int(c), eps))
    return out


def max_rounds_within(
    event: DpEvent, delta: float, max_epsilon: float, horizon: int, accountant: str = "prv"
) -> int:
    """Largest number of rounds ``r <= horizon`` with epsilon of ``r`` events within the cap."""

    def ok(r: int) -> bool:
        ev = DpEvent(event.noise_multiplier, event.sample_rate, r)
        return opacus_epsilon([ev], delta, accountant) <= max_epsilon * (1 + 1e-9)

    if horizon <= 0 or ok(horizon):
        return max(horizon, 0)
    lo, hi = 0, horizon  # ok(lo), not ok(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------- the step


def poisson_batch(num_records: int, q: float, rng: DpRandom) -> np.ndarray:
    """Indices of a Poisson batch: each record joins independently with probability ``q``."""
    return np.flatnonzero(rng.bernoulli_mask(num_records, q))


def clipped_gradient_sum(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    clip_norm: float,
    *,
    chunk: int = 256,
) -> tuple[np.ndarray, int, float]:
    """Sum over a batch of per-example gradients, each clipped to L2 norm ``clip_norm``.

    Per-example gradients come from Opacus' ``GradSampleModule`` (hooks; no noise is added
    here). Returns ``(sum as float64 in the flat parameter layout, number of examples whose
    gradient was clipped, summed loss)``. An empty batch gives zeros.
    """
    import torch
    from opacus import GradSampleModule

    params = [p for p in model.parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)
    total = torch.zeros(d, dtype=torch.float64)
    if len(y) == 0:
        return total.numpy(), 0, 0.0
    model.train()
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    crit = torch.nn.CrossEntropyLoss(reduction="sum")
    clipped, loss_sum = 0, 0.0
    try:
        for i in range(0, len(y), chunk):
            xb = torch.as_tensor(np.ascontiguousarray(x[i : i + chunk]))
            yb = torch.as_tensor(np.ascontiguousarray(y[i : i + chunk]))
            for p in params:
                p.grad_sample = None  # type: ignore[attr-defined]
                p.grad = None
            loss = crit(gsm(xb), yb)
            with warnings.catch_warnings():
                # Opacus' hooks on a first layer whose input needs no gradient: expected.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                loss.backward()
            loss_sum += float(loss.detach())
            flat = torch.cat(
                [p.grad_sample.reshape(len(yb), -1) for p in params],  # type: ignore[attr-defined]
                dim=1,
            )
            norms = flat.norm(dim=1)
            factor = (clip_norm / (norms + 1e-6)).clamp(max=1.0)
            clipped += int((norms > clip_norm).sum())
            total += (factor.unsqueeze(1) * flat).sum(0).double()
    finally:
        for p in params:
            p.grad_sample = None  # type: ignore[attr-defined]
            p.grad = None
        gsm._close()
    return total.numpy(), clipped, loss_sum


def clip_coordinates(values: np.ndarray, bound: float) -> tuple[np.ndarray, int]:
    """Clip every coordinate to ``[-bound, bound]`` (a contraction: sensitivity unchanged)."""
    n = int(np.count_nonzero(np.abs(values) > bound))
    return np.clip(values, -bound, bound), n


def learning_rate(train: TrainConfig, server_round: int, rounds: int) -> float:
    """The step size of the step taken from round ``server_round``'s aggregate."""
    if train.lr_schedule == "cosine" and rounds > 1:
        t = min(max(server_round - 1, 0), rounds)
        return train.learning_rate * 0.5 * (1.0 + math.cos(math.pi * t / rounds))
    return train.learning_rate


@dataclass
class OptimizerState:
    """What every client holds between rounds: the model and the momentum buffer (float64),
    and the last round whose aggregate it processed. Identical on every device."""

    params: np.ndarray
    momentum: np.ndarray
    applied_round: int = 0

    def digest(self) -> str:
        """SHA-256 of the float32 model the gradient is computed at (devices compare it)."""
        return hashlib.sha256(self.params.astype(np.float32).tobytes()).hexdigest()

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "params": self.params,
            "momentum": self.momentum,
            "applied_round": np.array([self.applied_round], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], num_values: int) -> OptimizerState:
        try:
            params = np.asarray(arrays["params"], dtype=np.float64)
            mom = np.asarray(arrays["momentum"], dtype=np.float64)
            applied = int(np.asarray(arrays["applied_round"]).reshape(-1)[0])
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise StateError(f"distributed model state: unreadable ({exc})") from None
        if params.shape != (num_values,) or mom.shape != (num_values,) or applied < 0:
            raise StateError("distributed model state: wrong shape or round (edited?)")
        if not (np.isfinite(params).all() and np.isfinite(mom).all()):
            raise StateError("distributed model state: non-finite values")
        return cls(params.copy(), mom.copy(), applied)


def apply_aggregate(
    state: OptimizerState,
    noisy_sum: np.ndarray,
    plan: DistributedPlan,
    train: TrainConfig,
    server_round: int,
    rounds: int,
) -> None:
    """Take round ``server_round``'s step from the decrypted noisy sum (units of C), in place.

    The gradient is ``C * sum / (q N)``; the update is torch's SGD with momentum
    (``v = mu v + g; w -= lr_t v``), in float64 so every device computes the same bits.
    """
    grad = noisy_sum.astype(np.float64) * (plan.clip_norm / plan.expected_batch)
    sgd_step(state, grad, train, server_round, rounds)


def sgd_step(
    state: OptimizerState, grad: np.ndarray, train: TrainConfig, server_round: int, rounds: int
) -> None:
    """One SGD step with momentum and the schedule, in place (central and distributed DP)."""
    mu = train.momentum
    if mu > 0:
        # torch starts the buffer at the first gradient: mu * 0 + g is the same.
        state.momentum = mu * state.momentum + grad
        step = state.momentum
    else:
        step = grad
    state.params = state.params - learning_rate(train, server_round, rounds) * step
    state.applied_round = server_round


# --------------------------------------------------------------------------- server side


def server_setup(
    cfg: RunConfig, params: Any, run_dir: Any, strategy_class: type
) -> tuple[Any, dict[str, Any], type, dict[str, Any]]:
    """What the ServerApp needs for a distributed run: (round gate, header entry, strategy
    class, its extra arguments).

    The gate stops the run before a round whose central epsilon would pass ``max_epsilon``
    (clients refuse such a round too); it is computed once, as the largest round count within
    the budget. The default strategy becomes :class:`~fedpriv.strategy.distributed.DistributedFedAvg`
    (a subclass given for experiments is kept if it already is one).
    """
    from fedpriv.strategy.core import EncryptedFedAvg
    from fedpriv.strategy.distributed import DistributedFedAvg

    p = cfg.privacy
    plan = distributed_plan(cfg, params)
    ok_rounds = max_rounds_within(plan.event(), p.delta, p.max_epsilon, cfg.rounds, p.accountant)

    def gate(rnd: int) -> str | None:
        if rnd > ok_rounds:
            return (
                f"round {rnd} would raise the central epsilon past max_epsilon"
                f" {p.max_epsilon:g} (sigma_effective {plan.sigma_effective:.4f}, q"
                f" {plan.sample_rate:.4g}: {ok_rounds} rounds fit)"
            )
        return None

    header = {
        **plan.to_dict(),
        "delta": p.delta,
        "accountant": p.accountant,
        "max_epsilon": p.max_epsilon,
        "rounds_within_budget": ok_rounds,
        "adjacency": "add/remove one record (Poisson subsampling at rate q over the union)",
    }
    cls = strategy_class
    if not issubclass(cls, DistributedFedAvg):
        if cls is not EncryptedFedAvg:
            raise StateError(
                f"privacy mode 'distributed' needs a DistributedFedAvg strategy, got {cls.__name__}"
            )
        cls = DistributedFedAvg

    def load(rnd: int) -> bytes | None:
        path = run_dir.global_blob(rnd)
        return path.read_bytes() if path.exists() else None

    return gate, header, cls, {"load_aggregate": load}


class ModelReplay:
    """The key holder's held-out evaluation: the clients' steps, replayed from the seeded model.

    Every client starts from the model the run's seed builds and takes the same deterministic
    step from each decrypted aggregate; so does this replay, and :meth:`digest` after round r
    equals the ``model_sha256`` the clients sign in round r + 1 (compared by the runner).
    """

    def __init__(self, cfg: RunConfig, params: Any, model: torch.nn.Module) -> None:
        from fedpriv.models import get_flat_params

        self.cfg = cfg
        self.plan = distributed_plan(cfg, params)
        self.k_min = max(self.plan.k_min, cfg.device.min_clients_per_aggregate)
        w = get_flat_params(model).astype(np.float64)
        self.state = OptimizerState(w, np.zeros_like(w), 0)
        self.discarded: list[int] = []

    def step(self, server_round: int, mean: np.ndarray, total: float, count: int) -> np.ndarray:
        """Apply round ``server_round``'s aggregate (as decoded); return the float32 model."""
        if count < self.k_min or not math.isclose(total, count) or not np.isfinite(mean).all():
            self.discarded.append(server_round)
            self.state.applied_round = server_round
        else:
            apply_aggregate(
                self.state,
                mean.astype(np.float64) * total,
                self.plan,
                self.cfg.train,
                server_round,
                self.cfg.rounds,
            )
        return self.state.params.astype(np.float32)

    def digest(self) -> str:
        return self.state.digest()
