"""Loss-threshold membership inference and the advantage differential privacy allows.

The attack is Yeom et al. 2018 ("Privacy Risk in Machine Learning: Analyzing the Connection to
Overfitting", CSF): guess "member" when a record's loss is below a threshold. Its *advantage*
is ``TPR - FPR``; here the threshold is the best one in hindsight, so the measured advantage is
an optimistic (attacker-favouring) estimate, which is the right side to err on in an audit.

For an (epsilon, delta)-DP training algorithm, any test of "was this record in the training
set" satisfies ``FPR + e^eps FNR >= 1 - delta`` and ``e^eps FPR + FNR >= 1 - delta``
(Kairouz, Oh & Viswanath 2015, "The Composition Theorem for Differential Privacy", Thm 2.1;
Wasserman & Zhou 2010). Maximising ``TPR - FPR = 1 - FNR - FPR`` over that region gives

    advantage <= (e^eps - 1 + 2 delta) / (e^eps + 1),

the bound stated by Humphries et al. 2023 ("Investigating Membership Inference Attacks under
Data Dependencies", CSF) and tight for the hypothesis-testing region. Yeom et al.'s
``e^eps - 1`` (pure DP) is looser everywhere. The bound is about one record whose membership is
a fair coin, with records independent of each other; the experiment averages the attack over
many records of one training run, which estimates the same quantity when members and
non-members are drawn from the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from fedpriv.data import ArrayDataset

__all__ = [
    "MembershipResult",
    "advantage_margin",
    "dp_advantage_bound",
    "loss_threshold_attack",
    "per_example_losses",
    "threshold_attack",
]


@dataclass(frozen=True)
class MembershipResult:
    """Outcome of a threshold attack.

    Attributes
    ----------
    advantage : float
        ``max over thresholds of TPR - FPR`` (0 = no better than a coin; 1 = perfect).
    auc : float
        Area under the ROC curve (0.5 = no better than a coin).
    threshold : float
        The loss threshold reaching ``advantage`` (loss <= threshold: guess member).
    tpr, fpr : float
        True- and false-positive rates at that threshold.
    n_members, n_nonmembers : int
        Sample sizes, for the statistical margin (:func:`advantage_margin`).
    """

    advantage: float
    auc: float
    threshold: float
    tpr: float
    fpr: float
    n_members: int
    n_nonmembers: int


def per_example_losses(model: nn.Module, data: ArrayDataset, batch_size: int = 512) -> np.ndarray:
    """Cross-entropy loss of ``model`` on every example of ``data``, float64, shape ``(n,)``."""
    import torch

    was_training = model.training
    model.eval()
    out: list[np.ndarray] = []
    crit = torch.nn.CrossEntropyLoss(reduction="none")
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(data.x[start : start + batch_size]))
                yb = torch.from_numpy(np.ascontiguousarray(data.y[start : start + batch_size]))
                out.append(crit(model(xb), yb).double().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def threshold_attack(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> MembershipResult:
    """Best-threshold advantage and AUC of "member iff loss <= threshold".

    Parameters
    ----------
    member_losses, nonmember_losses : np.ndarray
        Per-example losses of records in and out of the training set.

    Returns
    -------
    MembershipResult
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    mem = np.asarray(member_losses, dtype=np.float64).reshape(-1)
    non = np.asarray(nonmember_losses, dtype=np.float64).reshape(-1)
    if mem.size == 0 or non.size == 0:
        raise ValueError("threshold_attack: need at least one member and one non-member")
    if not (np.isfinite(mem).all() and np.isfinite(non).all()):
        raise ValueError("threshold_attack: losses must be finite")
    labels = np.concatenate([np.ones(mem.size), np.zeros(non.size)])
    scores = -np.concatenate([mem, non])  # low loss = member
    fpr, tpr, thr = roc_curve(labels, scores, drop_intermediate=False)
    i = int(np.argmax(tpr - fpr))
    return MembershipResult(
        advantage=float(tpr[i] - fpr[i]),
        auc=float(roc_auc_score(labels, scores)),
        threshold=float(-thr[i]),
        tpr=float(tpr[i]),
        fpr=float(fpr[i]),
        n_members=int(mem.size),
        n_nonmembers=int(non.size),
    )


def loss_threshold_attack(
    model: nn.Module, members: ArrayDataset, nonmembers: ArrayDataset
) -> MembershipResult:
    """Yeom et al.'s loss-threshold attack on ``model``: members vs held-out non-members."""
    return threshold_attack(
        per_example_losses(model, members), per_example_losses(model, nonmembers)
    )


def dp_advantage_bound(epsilon: float, delta: float) -> float:
    """Largest membership advantage (TPR - FPR) any attack can have on an (eps, delta)-DP model.

    ``(e^eps - 1 + 2 delta) / (e^eps + 1)``, capped at 1 (see the module docstring for the
    derivation and references). Equals ``tanh(eps / 2)`` when ``delta = 0``.
    """
    if epsilon < 0 or not 0 <= delta <= 1:
        raise ValueError(
            f"dp_advantage_bound: need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}"
        )
    if math.isinf(epsilon):
        return 1.0
    # (e^eps - 1)/(e^eps + 1) = tanh(eps/2) stays accurate for large eps, where e^eps overflows.
    return min(1.0, math.tanh(epsilon / 2) + 2 * delta / (math.exp(min(epsilon, 700.0)) + 1))


def advantage_margin(n_members: int, n_nonmembers: int, alpha: float = 1e-3) -> float:
    """Sampling slack on a best-threshold advantage measured on finite sets.

    By the Dvoretzky-Kiefer-Wolfowitz inequality (Massart's constant), each empirical CDF of the
    loss is within ``sqrt(ln(2/a) / 2n)`` of the true one at *every* threshold with probability
    ``1 - a``. The advantage is a difference of the two CDFs, so with ``a = alpha / 2`` per set
    the measured best-threshold advantage exceeds the true best advantage by at most the sum of
    the two widths, with probability at least ``1 - alpha``. Unlike a binomial sigma at one fixed
    threshold, this covers choosing the threshold after looking at the data.
    """
    if n_members < 1 or n_nonmembers < 1 or not 0 < alpha < 1:
        raise ValueError("advantage_margin: need positive sample sizes and alpha in (0, 1)")
    a = alpha / 2
    return sum(math.sqrt(math.log(2 / a) / (2 * n)) for n in (n_members, n_nonmembers))
