"""Model registry: every model builds, fits its inputs and passes the Opacus validator."""

from __future__ import annotations

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from fedpriv.errors import ConfigError, DataError
from fedpriv.models import available_models, build_model, model_fingerprint, num_params

SHAPES = [(1, 8, 8), (1, 28, 28), (13,)]
# Combinations a model cannot take: build_model must say so with a DataError.
UNFIT = {("cnn", (13,)), ("cnn-mnist", (1, 8, 8)), ("cnn-mnist", (13,))}


def test_available_models() -> None:
    assert available_models() == ["cnn", "cnn-mnist", "logreg", "mlp", "wide"]


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", available_models())
def test_models_validate_and_run(name: str, shape: tuple[int, ...]) -> None:
    if (name, shape) in UNFIT:
        with pytest.raises(DataError, match=name):
            build_model(name, shape, 10)
        return
    model = build_model(name, shape, 10, seed=0)
    ModuleValidator.validate(model, strict=True)  # raises if Opacus cannot handle it
    assert model(torch.randn(3, *shape)).shape == (3, 10)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize(
    ("name", "shape", "expected"),
    [
        ("cnn", (1, 8, 8), 6_090),
        ("cnn", (1, 28, 28), 20_490),
        ("cnn-mnist", (1, 28, 28), 26_010),
        ("logreg", (1, 8, 8), 650),
        ("mlp", (1, 28, 28), 50_890),
    ],
)
def test_parameter_counts(name: str, shape: tuple[int, ...], expected: int) -> None:
    assert num_params(build_model(name, shape, 10)) == expected


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_wide_is_dominated_by_one_linear(shape: tuple[int, ...]) -> None:
    model = build_model("wide", shape, 10)
    total = num_params(model)
    biggest = max(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert 350_000 < total < 450_000
    assert biggest > 0.9 * total


def test_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = build_model("cnn", (1, 8, 8), 10, seed=7)
    assert torch.equal(torch.rand(1), expected_next)  # global RNG unaffected
    b = build_model("cnn", (1, 8, 8), 10, seed=7)
    c = build_model("cnn", (1, 8, 8), 10, seed=8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_unknown_model_and_bad_arguments() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'resnet'.*available: cnn, cnn-mnist"):
        build_model("resnet", (1, 8, 8), 10)
    with pytest.raises(DataError, match="input shape"):
        build_model("mlp", (0,), 10)
    with pytest.raises(DataError, match="num_classes"):
        build_model("mlp", (4,), 0)
    with pytest.raises(DataError, match="28x28"):
        build_model("cnn-mnist", (1, 32, 32), 10)


@pytest.mark.filterwarnings("ignore:Full backward hook")
def test_opacus_per_sample_gradients_and_wrapped_fingerprint() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    fp = model_fingerprint(model)
    gsm = GradSampleModule(model)
    loss = torch.nn.functional.cross_entropy(gsm(torch.randn(4, 1, 8, 8)), torch.arange(4))
    loss.backward()
    assert all(p.grad_sample.shape[0] == 4 for p in gsm.parameters())  # type: ignore[union-attr]
    assert model_fingerprint(gsm) == fp and num_params(gsm) == num_params(model)
