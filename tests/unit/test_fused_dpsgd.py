"""Fused DP-SGD (fedpriv.privacy.fused) computes the same update as Opacus' hooks mode."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from fedpriv.config import load_config
from fedpriv.data.dataset import ArrayDataset
from fedpriv.errors import FedprivError
from fedpriv.models import build_model
from fedpriv.privacy.fused import FusedDpSgd, fused_supported
from fedpriv.privacy.rng import dp_random
from fedpriv.privacy.training import resolve_grad_sample_mode, train_local

SHAPE = (1, 8, 8)
CLIP = 0.5


def _batch(n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return torch.randn(n, *SHAPE, generator=gen) * 3, torch.randint(0, 10, (n,), generator=gen)


def _model(name: str = "cnn") -> torch.nn.Module:
    m = build_model(name, SHAPE, 10, seed=0)
    m.train()
    return m


def _loop_reference(x: torch.Tensor, y: torch.Tensor, expected: int) -> list[torch.Tensor]:
    """Each example's gradient in a loop, clipped to CLIP, summed, over the expected batch."""
    model = _model()
    params = list(model.parameters())
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for i in range(len(y)):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, params)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
        for t, g in zip(total, grads, strict=True):
            t += g.double() * min(1.0, CLIP / (norm + 1e-6))
    return [t / expected for t in total]


def _opacus_hooks_grads(x: torch.Tensor, y: torch.Tensor, expected: int) -> list[torch.Tensor]:
    from opacus.grad_sample import GradSampleModule
    from opacus.optimizers import DPOptimizer

    model = _model()
    gsm = GradSampleModule(model)
    opt = DPOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=CLIP,
        expected_batch_size=expected,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.nn.functional.cross_entropy(gsm(x), y).backward()
        opt.pre_step()
    return [p.grad.detach().clone() for p in model.parameters()]


def test_fused_gradients_match_the_per_example_loop_and_opacus() -> None:
    x, y = _batch()
    model = _model()
    dp = FusedDpSgd(
        model, noise_multiplier=0.0, max_grad_norm=CLIP, expected_batch_size=30, generator=None
    )
    loss = dp.compute_gradients(x, y)
    fused = [p.grad.detach().clone() for p in model.parameters()]
    dp.close()
    assert loss == pytest.approx(
        float(torch.nn.functional.cross_entropy(_model()(x), y, reduction="sum").detach()),
        rel=1e-5,
    )
    for f, r, o in zip(
        fused, _loop_reference(x, y, 30), _opacus_hooks_grads(x, y, 30), strict=True
    ):
        assert torch.allclose(f.double(), r, atol=1e-6)
        assert torch.allclose(f, o, atol=1e-6)
    # Clipping bites for most examples (inputs scaled up), so the check is not vacuous.
    model = _model()
    norms = []
    for i in range(len(y)):
        loss = torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        norms.append(float(torch.sqrt(sum((g**2).sum() for g in grads))))
    assert sum(n > CLIP for n in norms) > len(norms) // 2


def test_empty_batch_is_pure_noise_with_the_planned_std() -> None:
    model = _model()
    sigma, expected = 2.0, 8
    dp = FusedDpSgd(
        model,
        noise_multiplier=sigma,
        max_grad_norm=CLIP,
        expected_batch_size=expected,
        generator=torch.Generator().manual_seed(0),
    )
    x, y = _batch(0)
    assert dp.compute_gradients(x, y) == 0.0
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double() * expected
    assert g.numel() == dp.num_params > 5000
    assert float(g.mean()) == pytest.approx(0.0, abs=0.1)
    assert float(g.std()) == pytest.approx(sigma * CLIP, rel=0.05)  # 4 draws per coordinate, /2


def test_secure_noise_is_opacus_construction_from_the_given_generator() -> None:
    """A discarded first sample, then the halved sum of four draws per coordinate."""
    model = _model()
    gen = torch.Generator().manual_seed(1)
    dp = FusedDpSgd(
        model, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=1, generator=gen
    )
    start = gen.get_state()
    got = dp.noise(0.7)
    ref = torch.Generator()
    ref.set_state(start)
    torch.normal(0.0, 0.7, size=(1, 1), generator=ref)
    draws = torch.normal(0.0, 0.7, size=(4, dp.num_params), generator=ref)
    assert torch.allclose(got, draws.sum(0) * 0.5)
    assert not torch.allclose(dp.noise(0.7), got)  # the generator moved on
    # The step folds the 1/B of the mean into the same draws.
    gen.set_state(start)
    flat = torch.zeros(dp.num_params)
    dp._add_noise(flat, 0.7, 0.25)
    assert torch.allclose(flat, got * 0.25)


def test_close_restores_the_plain_model() -> None:
    model = _model()
    x, y = _batch(4)
    ref = model(x).detach()
    dp = FusedDpSgd(
        model, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, generator=None
    )
    dp.compute_gradients(x, y)
    dp.close()
    assert all("forward" not in m.__dict__ for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model(x).detach(), ref)


def test_models_that_mix_samples_are_refused() -> None:
    bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.BatchNorm1d(8))
    assert not fused_supported(bn)
    with pytest.raises(FedprivError, match="fused"):
        FusedDpSgd(
            bn, noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=4, generator=None
        )
    assert resolve_grad_sample_mode("auto", _model()) == "fused"
    assert resolve_grad_sample_mode("auto", _model("wide")) == "ghost"


def test_train_local_fused_and_hooks_agree_without_noise() -> None:
    """Same CSPRNG test stream, noise 0: the two modes take the same batches and steps."""
    rng_np = np.random.default_rng(0)
    data = ArrayDataset(
        rng_np.normal(size=(70, *SHAPE)).astype(np.float32),
        rng_np.integers(0, 10, 70),
        10,
        "synthetic",
    )
    out = {}
    for mode in ("fused", "hooks"):
        cfg = load_config(None, [f"privacy.grad_sample_mode={mode}", "train.local_epochs=2"])
        model = build_model("cnn", SHAPE, 10, seed=0)
        res = train_local(
            model,
            data,
            train=cfg.train,
            privacy=cfg.privacy,
            noise_multiplier=1e-12,
            rng=dp_random(7, "c"),
            keep_batches=True,
        )
        out[mode] = (model, res)
    (mf, rf), (mh, rh) = out["fused"], out["hooks"]
    assert rf.batches == rh.batches and rf.event == rh.event and rf.steps == 6
    assert rf.train_loss == pytest.approx(rh.train_loss, rel=1e-4)
    for a, b in zip(mf.parameters(), mh.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
