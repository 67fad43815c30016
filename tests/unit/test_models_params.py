"""Flat parameter vectors, fingerprints and safetensors checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from safetensors import safe_open
from safetensors.torch import save_file

from fedpriv.errors import DataError, WireError
from fedpriv.models import (
    available_models,
    build_model,
    get_flat_params,
    load_weights,
    model_fingerprint,
    model_name,
    num_params,
    save_weights,
    set_flat_params,
)


@pytest.mark.parametrize("name", available_models())
def test_flat_round_trip(name: str) -> None:
    shape = (1, 28, 28)
    a, b = build_model(name, shape, 10, seed=0), build_model(name, shape, 10, seed=1)
    vec = get_flat_params(a)
    assert vec.dtype == np.float32 and vec.shape == (num_params(a),)
    assert num_params(a) == sum(p.numel() for p in a.parameters())
    assert not np.array_equal(vec, get_flat_params(b))
    set_flat_params(b, vec)
    np.testing.assert_array_equal(get_flat_params(b), vec)
    x = torch.randn(2, *shape)
    assert torch.equal(a(x), b(x))


def test_flat_layout_is_state_dict_order() -> None:
    model = build_model("logreg", (3,), 2)
    set_flat_params(model, np.arange(8, dtype=np.float64))  # float64 is accepted, cast
    np.testing.assert_array_equal(model.layers[1].weight.detach(), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(model.layers[1].bias.detach(), [6, 7])


def test_flat_params_through_opacus_wrapper() -> None:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    gsm = GradSampleModule(model)
    vec = get_flat_params(gsm)
    np.testing.assert_array_equal(vec, get_flat_params(model))
    set_flat_params(gsm, np.zeros_like(vec))
    assert not get_flat_params(model).any()


@pytest.mark.parametrize(
    ("vec", "message"),
    [
        (np.zeros(649, np.float32), r"shape \(649,\).*needs \(650,\)"),
        (np.zeros((2, 325), np.float32), "shape"),
        (np.full(650, np.nan, np.float32), "NaN/inf"),
        (np.array(["a"] * 650), "dtype"),
    ],
)
def test_set_flat_params_rejects_bad_vectors(vec: np.ndarray, message: str) -> None:
    model = build_model("logreg", (1, 8, 8), 10, seed=0)
    before = get_flat_params(model)
    with pytest.raises(WireError, match=message):
        set_flat_params(model, vec)
    np.testing.assert_array_equal(get_flat_params(model), before)  # untouched


def test_fingerprint() -> None:
    fp = model_fingerprint(build_model("cnn", (1, 8, 8), 10, seed=0))
    assert len(fp) == 64
    assert fp == model_fingerprint(build_model("cnn", (1, 8, 8), 10, seed=1))  # weights ignored
    assert fp != model_fingerprint(build_model("cnn", (1, 8, 8), 9))
    assert fp != model_fingerprint(build_model("cnn", (1, 28, 28), 10))
    assert model_fingerprint(build_model("mlp", (64,), 10)) != model_fingerprint(
        build_model("logreg", (64,), 10)
    )


def test_safetensors_round_trip(tmp_path: Path) -> None:
    a, b = build_model("cnn", (1, 8, 8), 10, seed=0), build_model("cnn", (1, 8, 8), 10, seed=1)
    path = tmp_path / "sub" / "w.safetensors"
    save_weights(a, path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "fedpriv" and meta["model"] == "cnn" == model_name(a)
    assert meta["fingerprint"] == model_fingerprint(a)
    load_weights(b, path)
    np.testing.assert_array_equal(get_flat_params(a), get_flat_params(b))
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temp file left


def test_load_weights_errors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(build_model("cnn", (1, 8, 8), 10), path)
    with pytest.raises(DataError, match="holds weights of model 'cnn', but the model is 'mlp'"):
        load_weights(build_model("mlp", (1, 8, 8), 10), path)
    target = build_model("cnn", (1, 8, 8), 9, seed=5)
    before = get_flat_params(target)
    with pytest.raises(DataError, match=r"'layers.7.weight' has shape \(10, 128\), .*\(9, 128\)"):
        load_weights(target, path)
    np.testing.assert_array_equal(get_flat_params(target), before)  # unchanged on error

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(DataError, match="metadata 'format' is None"):
        load_weights(target, tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 32)
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_weights(target, tmp_path / "junk.safetensors")
    with pytest.raises(DataError, match="not found"):
        load_weights(target, tmp_path / "missing.safetensors")
