"""Attacks as tests: what a curious server learns from one client update, and from a model.

Gradient inversion (Geiping et al. 2020, cosine loss) against the update ``train_local``
produces for a client holding a single example (batch 1, one step: the attacker's best case):

- a plaintext non-private update gives the image back;
- clipping alone does not help (the cosine loss ignores scale; an L2-loss attack, which
  matches magnitudes, can be stopped by clipping alone, so it would pass for the wrong reason);
- clipping plus the noise our default config plans reduces it to a random guess.

The model is :func:`~fedpriv.audit.inversion.inversion_cnn` (tanh, strided convolutions, ~10k
parameters on digits), on which the plaintext attack is known to succeed; on fedpriv's max-pool
``cnn`` the optimiser stalls (10-30 dB) whatever the defence, which would prove nothing.

Loss-threshold membership inference (Yeom et al. 2018): a record-level DP model leaks less than
a non-private one trained on the same members, and no more than its epsilon allows.

All seeds are fixed, including the DP randomness (an ``InsecureTestRandom``, test-only), and
every threshold leaves a wide margin around the values measured (in comments), so a loaded
machine or a different thread count cannot flip the outcome.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from fedpriv.audit.inversion import (
    inversion_cnn,
    invert_gradient,
    psnr,
    random_image_psnr,
    recover_label,
    split_flat,
    update_to_gradient,
)
from fedpriv.audit.membership import (
    advantage_margin,
    dp_advantage_bound,
    loss_threshold_attack,
    threshold_attack,
)
from fedpriv.config import RunConfig, load_config
from fedpriv.data import ArrayDataset, load_dataset
from fedpriv.models import build_model, evaluate, get_flat_params
from fedpriv.privacy import (
    noise_multiplier_for,
    opacus_epsilon,
    plan_noise_multiplier,
    sample_rate,
    steps_per_round,
    train_local,
)
from fedpriv.privacy.rng import InsecureTestRandom
from tests.shared_data import shared_data

# Opacus warns about its non-cryptographic RNG and empty-input backward hooks; both expected.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ATTACK: dict[str, Any] = {"steps": 200, "restarts": 2, "seed": 0}


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # These models are tiny: a second intra-op thread only adds synchronisation, which on a
    # shared, loaded machine costs several times the work itself (measured 2-4x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[ArrayDataset, ArrayDataset]:
    return load_dataset("digits")


# --------------------------------------------------------------------------- gradient inversion


def _client_update(
    one: ArrayDataset, *, mode: str, sigma: float
) -> tuple[torch.nn.Module, list[torch.Tensor], RunConfig]:
    """Run the client's own training on one example and return (model before, -update/lr, cfg).

    The server holds the global model the client started from and sees ``new - old``; for one
    plain SGD step that is ``-lr * g``, with ``g`` clipped and noised when DP is on.
    """
    cfg = load_config(
        None,
        [
            "train.batch_size=1",
            "train.local_epochs=1",
            f"privacy.mode={mode}",
        ],
    )
    c, h, w = one.input_shape
    model = inversion_cnn((c, h, w), one.num_classes, seed=1)
    before = copy.deepcopy(model)
    old = get_flat_params(model)
    res = train_local(
        model,
        one,
        train=cfg.train,
        privacy=cfg.privacy,
        noise_multiplier=sigma,
        rng=InsecureTestRandom(3),
    )
    assert res.steps == 1
    update = get_flat_params(model) - old
    return before, update_to_gradient(split_flat(before, update), cfg.train.learning_rate), cfg


def _norm(ts: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in ts))


@pytest.fixture(scope="module", params=["digits", "mnist"])
def target(
    request: pytest.FixtureRequest, digits: tuple[ArrayDataset, ArrayDataset]
) -> tuple[ArrayDataset, torch.Tensor, tuple[float, float]]:
    """One training image (8x8 digit, or 28x28 MNIST from the shared data folder)."""
    if request.param == "mnist":
        train, _ = load_dataset(f"mnist:{shared_data('mnist')}")
    else:
        train, _ = digits
    one = train.subset([0])
    # The attacker knows the data's (standardised) range and boxes the reconstruction into it.
    bounds = (float(train.x.min()), float(train.x.max()))
    return one, torch.from_numpy(one.x.copy()), bounds


@pytest.fixture(scope="module")
def plaintext_psnr(target: tuple[ArrayDataset, torch.Tensor, tuple[float, float]]) -> float:
    one, truth, bounds = target
    model, grad, _ = _client_update(one, mode="off", sigma=0.0)
    # iDLG: a single example's label is read off the output bias gradient.
    assert recover_label(model, grad) == int(one.y[0])
    res = invert_gradient(
        model, grad, input_shape=one.input_shape, truth=truth, bounds=bounds, **ATTACK
    )
    assert res.label == int(one.y[0]) and res.psnr is not None
    return res.psnr


def test_plaintext_update_is_inverted(plaintext_psnr: float) -> None:
    # Measured 73.9 dB on digits, 71.3 dB on MNIST (RESEARCH.md section 6 saw 61-93 dB).
    assert plaintext_psnr > 30.0


def test_clipping_alone_does_not_stop_cosine_attack(
    target: tuple[ArrayDataset, torch.Tensor, tuple[float, float]], plaintext_psnr: float
) -> None:
    one, truth, bounds = target
    _, plain, _ = _client_update(one, mode="off", sigma=0.0)
    # Opacus clipping with negligible noise (train_local refuses sigma = 0 for DP accounting).
    model, clipped, cfg = _client_update(one, mode="record", sigma=1e-6)
    clip = cfg.privacy.max_grad_norm
    # Clipping really bit: the raw gradient (norm 5.1 digits, 13.6 MNIST) was scaled to the clip norm.
    assert _norm(plain) > 2 * clip
    assert _norm(clipped) == pytest.approx(clip, rel=1e-3)
    res = invert_gradient(
        model,
        clipped,
        input_shape=one.input_shape,
        label=int(one.y[0]),
        truth=truth,
        bounds=bounds,
        **ATTACK,
    )
    assert res.psnr is not None
    # Measured 73.8 / 71.3 dB, as plaintext: scaling leaves the gradient's direction intact.
    assert res.psnr > 30.0
    assert res.psnr > plaintext_psnr - 10.0


def test_dp_update_defeats_inversion(
    target: tuple[ArrayDataset, torch.Tensor, tuple[float, float]], plaintext_psnr: float
) -> None:
    one, truth, bounds = target
    # The sigma a mean-sized client plans under the default config (target epsilon 8 over the
    # default horizon): digits split over the default number of clients, less the local test part.
    default = load_config(None, [])
    train, _ = load_dataset(default.data.dataset)
    n_client = round(len(train) / default.federation.num_clients * (1 - default.data.test_fraction))
    sigma = noise_multiplier_for(default, n_client)
    assert 0.5 < sigma < 5.0  # 1.42 for 115 examples
    model, grad, _ = _client_update(one, mode="record", sigma=sigma)
    # Strongest attacker: told the true label (iDLG cannot read it through the noise).
    res = invert_gradient(
        model,
        grad,
        input_shape=one.input_shape,
        label=int(one.y[0]),
        truth=truth,
        bounds=bounds,
        **ATTACK,
    )
    baseline = random_image_psnr(truth, bounds)
    assert res.psnr is not None
    # Measured 6.9 dB (digits; 5.3-7.6 over noise seeds 0-2) and 6.3 dB (MNIST), against 5.9
    # and 5.0 dB for a uniform random image in the same box.
    assert res.psnr < 15.0
    assert res.psnr < baseline + 5.0
    assert res.psnr < plaintext_psnr - 30.0
    # A smoothness prior lifts the score a little (9.7 / 11.0 dB measured) because it draws a
    # blob, not because it reads the update: still nowhere near a reconstruction.
    tv = invert_gradient(
        model,
        grad,
        input_shape=one.input_shape,
        label=int(one.y[0]),
        truth=truth,
        bounds=bounds,
        tv_weight=0.1,
        **ATTACK,
    )
    assert tv.psnr is not None and tv.psnr < 15.0


# --------------------------------------------------------------------------- membership inference

N_MEMBERS = 200
DP_EPSILON = 3.0


@pytest.fixture(scope="module")
def mia_split(digits: tuple[ArrayDataset, ArrayDataset]) -> tuple[ArrayDataset, ArrayDataset]:
    # Members and non-members are disjoint draws from the same training split, so the only
    # difference between them is membership.
    train, _ = digits
    perm = np.random.default_rng(0).permutation(len(train))
    return train.subset(perm[:N_MEMBERS]), train.subset(perm[N_MEMBERS : 2 * N_MEMBERS])


def test_dp_limits_membership_inference(mia_split: tuple[ArrayDataset, ArrayDataset]) -> None:
    members, nonmembers = mia_split
    k = members.num_classes

    # Non-private, trained to memorise: 200 epochs on 200 records.
    cfg = load_config(None, ["privacy.mode=off", "train.local_epochs=200"])
    plain = build_model("cnn", members.input_shape, k, seed=0)
    train_local(
        plain,
        members,
        train=cfg.train,
        privacy=cfg.privacy,
        noise_multiplier=0.0,
        rng=InsecureTestRandom(0),
    )
    plain_mia = loss_threshold_attack(plain, members, nonmembers)

    # Record-level DP (Opacus via the client's train_local) on the same members, epsilon 3.
    dcfg = load_config(None, ["train.local_epochs=10", "train.batch_size=64"])
    q = sample_rate(N_MEMBERS, dcfg.train.batch_size)
    steps = steps_per_round(N_MEMBERS, dcfg.train.batch_size, dcfg.train.local_epochs)
    sigma = plan_noise_multiplier(DP_EPSILON, dcfg.privacy.delta, q, steps, dcfg.privacy.accountant)
    private = build_model("cnn", members.input_shape, k, seed=0)
    res = train_local(
        private,
        members,
        train=dcfg.train,
        privacy=dcfg.privacy,
        noise_multiplier=sigma,
        rng=InsecureTestRandom(0),
    )
    assert res.event is not None
    eps = opacus_epsilon([res.event], dcfg.privacy.delta, dcfg.privacy.accountant)
    assert eps <= DP_EPSILON * 1.01
    dp_mia = loss_threshold_attack(private, members, nonmembers)

    # The DP model learned something (chance is 10%): its low advantage is not a broken model's.
    # Measured 46% held-out accuracy; the non-private model 93%.
    assert evaluate(private, nonmembers)[1] > 0.25
    assert evaluate(plain, nonmembers)[1] > 0.8

    # The attack works on the control (measured advantage 0.425, AUC 0.69) ...
    assert plain_mia.advantage > 0.25
    # ... and much less on the DP model (measured 0.135, AUC 0.57; over member draws 0-3 the
    # gap was 0.19-0.29).
    assert dp_mia.advantage < plain_mia.advantage - 0.1

    # Within what epsilon allows. Slack: DKW (Massart) width for both empirical loss CDFs at
    # 99.9% confidence, valid for the best threshold picked after the fact (0.29 for 200 + 200).
    bound = dp_advantage_bound(eps, dcfg.privacy.delta)  # 0.904 at the epsilon spent, 2.99
    margin = advantage_margin(dp_mia.n_members, dp_mia.n_nonmembers, alpha=1e-3)
    assert dp_mia.advantage <= bound + margin


# --------------------------------------------------------------------------- the bound itself


def test_advantage_bound_values() -> None:
    # delta = 0: tanh(eps / 2); the bound is below Yeom et al.'s e^eps - 1 everywhere.
    assert dp_advantage_bound(0.0, 0.0) == 0.0
    assert dp_advantage_bound(1.0, 0.0) == pytest.approx((math.e - 1) / (math.e + 1))
    for eps in (0.1, 0.5, 1.0, 2.0, 8.0):
        b = dp_advantage_bound(eps, 1e-5)
        assert b == pytest.approx((math.exp(eps) - 1 + 2e-5) / (math.exp(eps) + 1))
        assert b < min(1.0, math.exp(eps) - 1 + 1e-5) or b == 1.0
    assert dp_advantage_bound(1e6, 0.0) == 1.0
    assert dp_advantage_bound(math.inf, 0.0) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dp_advantage_bound(800.0, 0.5) == 1.0


# --------------------------------------------------------------------------- the helpers


def test_psnr_and_threshold_attack_on_known_inputs() -> None:
    ref = np.linspace(0.0, 1.0, 64, dtype=np.float32)
    assert psnr(ref, ref) == math.inf
    assert psnr(ref + 0.1, ref) == pytest.approx(20.0, abs=1e-4)  # range 1, MSE 0.01

    low, high = np.linspace(0.0, 0.4, 50), np.linspace(0.6, 1.0, 50)
    sep = threshold_attack(low, high)
    assert (sep.advantage, sep.auc, sep.tpr, sep.fpr) == (1.0, 1.0, 1.0, 0.0)
    assert 0.4 <= sep.threshold < 0.6
    same = threshold_attack(low, low)
    assert same.advantage == 0.0 and same.auc == pytest.approx(0.5)
    # Members with the *higher* losses: a low-loss rule gains nothing (the empty rule ties).
    assert threshold_attack(high, low).advantage == 0.0
    with pytest.raises(ValueError):
        threshold_attack(np.array([]), high)

    assert advantage_margin(200, 200) == pytest.approx(2 * math.sqrt(math.log(4000) / 400))
    assert advantage_margin(2000, 2000) < advantage_margin(200, 200)


def test_split_flat_and_label_recovery() -> None:
    model = inversion_cnn((1, 8, 8), 10, seed=0)
    parts = split_flat(model, get_flat_params(model))
    assert all(torch.equal(a, b.detach()) for a, b in zip(parts, model.parameters(), strict=True))

    # iDLG without a bias: the true class's output row has the largest gradient norm.
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10, bias=False))
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    for label in range(10):
        loss = torch.nn.functional.cross_entropy(net(x), torch.tensor([label]))
        grads = list(torch.autograd.grad(loss, list(net.parameters())))
        assert recover_label(net, grads) == label
