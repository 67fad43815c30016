"""Central DP-SGD on the union of the clients' training data: the ceiling of distributed DP.

The same model (built from the run's seed), the same records (every client's training partition,
without the clients' local test splits), the same mechanism as privacy mode ``distributed``:
Poisson batches at rate ``q = train.batch_size / N``, per-example gradients from Opacus clipped to
``C``, Gaussian noise of std ``sigma C`` on the sum, the fixed denominator ``q N``, and the same
SGD step with momentum and schedule, one step per configured round. Sigma is calibrated with the
run's accountant (PRV by default) to reach ``target_epsilon`` after all steps, and the result
states the PRV and PLD epsilons of the history ``(sigma, q, steps)``.

``validation_fraction`` > 0 holds out that share of the training union (stratified) and evaluates
on it instead of the test set: hyperparameters are chosen that way, never on the test set.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedpriv.errors import ConfigError

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.data import ArrayDataset
    from fedpriv.privacy.rng import DpRandom

__all__ = ["CentralResult", "central_datasets", "run_central"]


@dataclass(frozen=True)
class CentralResult:
    accuracy: float
    loss: float
    evaluated_on: str
    """``test`` (the held-out set) or ``validation`` (a split of the training union)."""
    records: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon: float
    epsilon_pld: float
    delta: float
    seconds: float
    curve: list[tuple[int, float]] = field(default_factory=list)
    """(step, accuracy) at every evaluation."""


def central_datasets(
    cfg: RunConfig, validation_fraction: float = 0.0
) -> tuple[ArrayDataset, ArrayDataset, str]:
    """(training union, evaluation set, its name): the records the federation trains on."""
    from fedpriv.data import ArrayDataset, load_dataset
    from fedpriv.runs.prepare import client_partitions

    d = cfg.data
    train, test = load_dataset(
        d.dataset,
        label_column=d.label_column,
        holdout_fraction=d.holdout_fraction,
        seed=cfg.seed,
        max_samples=d.max_samples,
        validation_fraction=d.validation_fraction,
    )
    parts = client_partitions(cfg, train)
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    if validation_fraction <= 0:
        where = "validation" if d.validation_fraction > 0 else "test"
        return ArrayDataset(x=x, y=y, num_classes=train.num_classes, name="union"), test, where
    if not 0 < validation_fraction < 1:
        raise ConfigError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    from sklearn.model_selection import train_test_split

    tr, va = train_test_split(
        np.arange(len(y)), test_size=validation_fraction, stratify=y, random_state=cfg.seed
    )
    tr, va = np.sort(tr), np.sort(va)
    k = train.num_classes
    return (
        ArrayDataset(x=x[tr], y=y[tr], num_classes=k, name="union-train"),
        ArrayDataset(x=x[va], y=y[va], num_classes=k, name="union-validation"),
        "validation",
    )


def run_central(
    cfg: RunConfig,
    *,
    validation_fraction: float = 0.0,
    rng: DpRandom | None = None,
    out: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> CentralResult:
    """Train ``cfg.rounds`` central DP-SGD steps (see the module docstring).

    ``cfg.privacy.mode`` ``off`` trains without noise (clipping kept). ``out`` gets a
    ``metrics.json`` the sweep summary reads (``privacy_mode`` ``central``).
    """
    import torch

    from fedpriv.models import build_model, evaluate, get_flat_params, set_flat_params
    from fedpriv.privacy.accounting import (
        DpEvent,
        opacus_epsilon,
        plan_noise_multiplier,
        pld_epsilon,
    )
    from fedpriv.privacy.distributed import (
        OptimizerState,
        clipped_gradient_sum,
        poisson_batch,
        sgd_step,
    )
    from fedpriv.privacy.rng import OsRandom

    t_start = time.perf_counter()
    rng = rng or OsRandom()
    train, evalset, where = central_datasets(cfg, validation_fraction)
    p, steps = cfg.privacy, cfg.rounds
    n = len(train)
    q = min(1.0, cfg.train.batch_size / n)
    batch = q * n
    dp = p.mode != "off"
    sigma = 0.0
    if dp:
        sigma = p.noise_multiplier or plan_noise_multiplier(
            p.target_epsilon, p.delta, q, steps, p.accountant
        )
    model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
    w = get_flat_params(model).astype(np.float64)
    st = OptimizerState(w, np.zeros_like(w), 0)
    gen = rng.torch_generator()
    every = max(1, cfg.simulation.eval_every)
    curve: list[tuple[int, float]] = []
    rounds: list[dict[str, Any]] = []
    loss, acc = math.nan, math.nan
    for t in range(1, steps + 1):
        set_flat_params(model, st.params.astype(np.float32))
        idx = poisson_batch(n, q, rng)
        gsum, _, _ = clipped_gradient_sum(model, train.x[idx], train.y[idx], p.max_grad_norm)
        if dp:
            noise = torch.normal(0.0, sigma * p.max_grad_norm, (gsum.size,), generator=gen)
            gsum = gsum + noise.double().numpy()
        sgd_step(st, gsum / batch, cfg.train, t, steps)
        entry: dict[str, Any] = {"round": t, "heldout_accuracy": None, "clients": {}}
        if t % every == 0 or t == steps:
            set_flat_params(model, st.params.astype(np.float32))
            loss, acc = evaluate(model, evalset)
            entry["heldout_accuracy"], entry["heldout_loss"] = acc, loss
            curve.append((t, acc))
            if log:
                log(f"step {t}/{steps}: {where} accuracy {acc:.4f}")
        rounds.append(entry)
    hist = [DpEvent(sigma, q, steps)] if dp else []
    res = CentralResult(
        accuracy=acc,
        loss=loss,
        evaluated_on=where,
        records=n,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        epsilon=opacus_epsilon(hist, p.delta, p.accountant),
        epsilon_pld=pld_epsilon(hist, p.delta),
        delta=p.delta,
        seconds=time.perf_counter() - t_start,
        curve=curve,
    )
    if out is not None:
        from fedpriv.config import config_to_dict
        from fedpriv.fileio import atomic_write_text

        out.mkdir(parents=True, exist_ok=True)
        doc = {
            "name": cfg.name,
            "privacy_mode": "central" if dp else "off",
            "encryption": "off",
            "runner": "central",
            "epsilon": res.epsilon,
            "central": asdict(res),
            "config": config_to_dict(cfg),
            "rounds": rounds,
        }
        atomic_write_text(out / "metrics.json", json.dumps(doc, indent=2), mode=0o644)
    return res
