"""Partitioning over clients (flwr-datasets partitioners) and per-client splits."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedpriv.data import (
    PARTITIONERS,
    ArrayDataset,
    client_datasets,
    label_distribution,
    load_dataset,
    partition,
)
from fedpriv.errors import DataError


@pytest.fixture(scope="module")
def digits_train() -> ArrayDataset:
    return load_dataset("digits", seed=0)[0]


def _sorted_labels(per_class: int = 50, classes: int = 10) -> np.ndarray:
    return np.repeat(np.arange(classes), per_class)


@pytest.mark.parametrize("name", PARTITIONERS)
def test_disjoint_non_empty_deterministic(name: str, digits_train: ArrayDataset) -> None:
    y = digits_train.y
    parts = partition(y, 10, name, seed=3)
    assert len(parts) == 10 and all(len(p) > 0 for p in parts)
    allidx = np.concatenate(parts)
    assert len(np.unique(allidx)) == len(allidx)  # disjoint
    assert allidx.min() >= 0 and allidx.max() < len(y)
    if name in ("iid", "dirichlet"):
        assert len(allidx) == len(y)  # covering
    again = partition(y.copy(), 10, name, seed=3)  # equal labels, new array: same result
    for a, b in zip(parts, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not parts[0].flags.writeable  # cached: shared, so read-only


def test_seed_changes_result(digits_train: ArrayDataset) -> None:
    a = partition(digits_train.y, 5, "dirichlet", seed=0)
    b = partition(digits_train.y, 5, "dirichlet", seed=1)
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_iid_mixes_classes_even_on_sorted_data() -> None:
    # IidPartitioner itself shards contiguously; partition() shuffles first.
    y = _sorted_labels()
    dist = label_distribution(y, partition(y, 5, "iid"), 10)
    assert (dist > 0).all()
    assert dist.sum(axis=1).tolist() == [100] * 5


def test_dirichlet_is_non_iid(digits_train: ArrayDataset) -> None:
    y = digits_train.y

    def mean_tv(alpha: float) -> float:
        dist = label_distribution(y, partition(y, 10, "dirichlet", alpha=alpha), 10)
        shares = dist / dist.sum(axis=1, keepdims=True)
        glob = np.bincount(y) / len(y)
        return float(0.5 * np.abs(shares - glob).sum(axis=1).mean())

    skewed, mild = mean_tv(0.1), mean_tv(100.0)
    assert skewed > 0.4  # far from the global label distribution
    assert mild < 0.15
    assert skewed > 3 * mild


@pytest.mark.parametrize("cpp", [1, 2, 3])
def test_pathological_classes_per_partition(cpp: int) -> None:
    y = _sorted_labels()
    dist = label_distribution(y, partition(y, 10, "pathological", classes_per_partition=cpp), 10)
    assert ((dist > 0).sum(axis=1) == cpp).all()


def test_shard_few_classes_per_partition() -> None:
    y = _sorted_labels()
    dist = label_distribution(y, partition(y, 10, "shard", classes_per_partition=2), 10)
    assert ((dist > 0).sum(axis=1) <= 2).all()  # shards of 25 never straddle a class of 50


def test_impossible_splits_raise_data_error() -> None:
    y = _sorted_labels(per_class=2, classes=3)
    with pytest.raises(DataError, match="cannot split 6 training samples into 7"):
        partition(y, 7, "iid")
    with pytest.raises(DataError, match="only 3 classes"):
        partition(y, 2, "pathological", classes_per_partition=4)
    with pytest.raises(DataError, match="at least num_clients x classes_per_partition = 8"):
        partition(y, 4, "shard", classes_per_partition=2)
    with pytest.raises(DataError, match="unknown partitioner"):
        partition(y, 2, "random")
    with pytest.raises(DataError, match="1-D integer"):
        partition(y.astype(float), 2, "iid")


def test_dirichlet_failure_is_explained() -> None:
    y = _sorted_labels(per_class=3, classes=2)
    with pytest.raises(DataError, match=r"dirichlet partitioning.*raise data\.alpha"):
        partition(y, 6, "dirichlet", alpha=0.01)


def test_client_datasets(digits_train: ArrayDataset) -> None:
    kw: dict[str, Any] = {
        "partitioner": "dirichlet",
        "alpha": 0.5,
        "classes_per_partition": 2,
        "seed": 0,
    }
    parts = partition(digits_train.y, 4, "dirichlet", alpha=0.5, seed=0)
    total = 0
    for pid in range(4):
        tr, te = client_datasets(digits_train, pid, 4, test_fraction=0.2, **kw)
        assert len(te) == int(len(parts[pid]) * 0.2) and len(tr) + len(te) == len(parts[pid])
        assert tr.num_classes == 10 and tr.input_shape == (1, 8, 8)
        assert "client" in tr.name
        tr2, te2 = client_datasets(digits_train, pid, 4, test_fraction=0.2, **kw)
        np.testing.assert_array_equal(tr.x, tr2.x)
        np.testing.assert_array_equal(te.y, te2.y)
        total += len(tr) + len(te)
    assert total == len(digits_train)
    tr, te = client_datasets(digits_train, 0, 4, test_fraction=0.0, **kw)
    assert len(te) == 0 and len(tr) == len(parts[0])


def test_client_datasets_keeps_a_training_sample() -> None:
    ds = ArrayDataset(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 2, "tiny")
    tr, te = client_datasets(ds, 1, 4, partitioner="iid", test_fraction=0.9)
    assert (len(tr), len(te)) == (1, 0)
    with pytest.raises(DataError, match="out of range"):
        client_datasets(ds, 4, 4, partitioner="iid")
    with pytest.raises(DataError, match="test_fraction"):
        client_datasets(ds, 0, 4, partitioner="iid", test_fraction=1.0)
