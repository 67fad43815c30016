"""Split a training set over federated clients with the flwr-datasets partitioners.

The partitioners are written for Hugging Face datasets; here they run offline on a tiny
``datasets.Dataset`` of ``{"label", "_idx"}`` built from the label array, and the ``_idx`` column
of each partition gives the sample indices back (partitioners may sort or shuffle rows).

flwr-datasets quirks handled here:

* ``IidPartitioner`` cuts the dataset into contiguous shards without shuffling, so a
  class-sorted dataset would give single-class "IID" partitions: rows are permuted first.
* ``DirichletPartitioner`` resamples until every partition has ``min_partition_size`` samples
  and raises ``ValueError`` after 10 tries (warning on each); that becomes a :class:`DataError`.
* ``ShardPartitioner`` divides by a computed shard size that is 0 when there are fewer samples
  than shards; that is refused up front.
* ``PathologicalPartitioner`` drops classes no partition was assigned; it therefore does not
  always cover the data (neither does ``shard``, which drops an incomplete last shard).
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from typing import Any

import numpy as np

from fedpriv.data.dataset import ArrayDataset
from fedpriv.errors import DataError

__all__ = [
    "PARTITIONERS",
    "clear_partition_cache",
    "client_datasets",
    "label_distribution",
    "local_split",
    "partition",
]

PARTITIONERS = ("iid", "dirichlet", "pathological", "shard")

_CACHE_SIZE = 8
_cache: OrderedDict[tuple[Any, ...], tuple[np.ndarray, ...]] = OrderedDict()


def partition(
    labels: np.ndarray,
    num_partitions: int,
    partitioner: str,
    *,
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Assign sample indices to ``num_partitions`` clients.

    Parameters
    ----------
    labels : np.ndarray
        Integer labels of the training set, shape ``(n,)``.
    num_partitions : int
        Number of clients.
    partitioner : str
        ``iid`` (equal random shares), ``dirichlet`` (per-class shares drawn from
        Dir(``alpha``): small alpha = strongly non-IID), ``pathological`` (each partition holds
        ``classes_per_partition`` classes, assigned deterministically: partition *i* gets
        classes *i*, *i+1*, ...) or ``shard`` (label-sorted data cut into shards,
        ``classes_per_partition`` shards per partition, as in McMahan et al. 2017).
    alpha, classes_per_partition, seed
        See above; the result is deterministic for a given seed.

    Returns
    -------
    list of np.ndarray
        Disjoint, non-empty int64 index arrays (read-only: they are cached). ``iid`` and
        ``dirichlet`` cover every sample.

    Raises
    ------
    DataError
        When the requested split is impossible, saying which setting to change.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (y.size and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"partition: labels must be a 1-D integer array, got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    n = len(y)
    if partitioner not in PARTITIONERS:
        raise DataError(
            f"data.partitioner: unknown partitioner {partitioner!r} (use {', '.join(PARTITIONERS)})"
        )
    if num_partitions < 1:
        raise DataError(f"federation.num_clients: must be >= 1, got {num_partitions}")
    if num_partitions > n:
        raise DataError(
            f"cannot split {n} training samples into {num_partitions} partitions: every client "
            "needs at least one sample; lower federation.num_clients or use more data "
            "(data.max_samples)"
        )
    if partitioner == "dirichlet" and not alpha > 0:
        raise DataError(f"data.alpha: must be > 0, got {alpha}")
    if partitioner in ("pathological", "shard") and classes_per_partition < 1:
        raise DataError(f"data.classes_per_partition: must be >= 1, got {classes_per_partition}")

    key = (
        hashlib.sha256(y.tobytes()).hexdigest(),
        n,
        num_partitions,
        partitioner,
        float(alpha) if partitioner == "dirichlet" else None,
        classes_per_partition if partitioner in ("pathological", "shard") else None,
        seed,
    )
    if key in _cache:
        _cache.move_to_end(key)
        return list(_cache[key])
    parts = _compute(y, num_partitions, partitioner, alpha, classes_per_partition, seed)
    for i, p in enumerate(parts):
        if len(p) == 0:
            raise DataError(
                f"{partitioner} partitioning left partition {i} of {num_partitions} empty; "
                "lower federation.num_clients, raise data.alpha, change "
                "data.classes_per_partition or choose another data.partitioner"
            )
        p.setflags(write=False)
    _cache[key] = tuple(parts)
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return parts


def _compute(
    y: np.ndarray, num_partitions: int, partitioner: str, alpha: float, cpp: int, seed: int
) -> list[np.ndarray]:
    # Imported here: flwr_datasets and datasets take seconds to import.
    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    n = len(y)
    order = np.arange(n, dtype=np.int64)
    p: Any
    if partitioner == "iid":
        order = np.random.default_rng(seed).permutation(n)  # IidPartitioner does not shuffle
        p = IidPartitioner(num_partitions=num_partitions)
    elif partitioner == "dirichlet":
        # Ask for a few samples per client (10 at most), but never more than half the mean
        # share, so feasible splits of small datasets are not rejected.
        min_size = max(1, min(10, n // (2 * num_partitions)))
        p = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_size,
            self_balancing=False,
            seed=seed,
        )
    elif partitioner == "pathological":
        num_classes = len(np.unique(y))
        if cpp > num_classes:
            raise DataError(
                f"data.classes_per_partition: {cpp} classes per partition requested but the "
                f"training set has only {num_classes} classes"
            )
        p = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=cpp,
            class_assignment_mode="deterministic",
            seed=seed,
        )
    else:
        if n < num_partitions * cpp:
            raise DataError(
                f"shard partitioning needs at least num_clients x classes_per_partition = "
                f"{num_partitions * cpp} samples, the training set has {n}; lower "
                "federation.num_clients or data.classes_per_partition"
            )
        p = ShardPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_shards_per_partition=cpp,
            seed=seed,
        )
    p.dataset = Dataset.from_dict({"label": y[order], "_idx": order})
    try:
        with warnings.catch_warnings():
            # Dirichlet warns on every resampling; the outcome is reported below instead.
            warnings.simplefilter("ignore")
            return [
                np.asarray(p.load_partition(i)["_idx"], dtype=np.int64)
                for i in range(num_partitions)
            ]
    except ValueError as e:
        advice = {
            "dirichlet": "raise data.alpha (less skew) or lower federation.num_clients",
            "pathological": "lower federation.num_clients or data.classes_per_partition",
            "shard": "lower federation.num_clients or data.classes_per_partition",
            "iid": "lower federation.num_clients",
        }[partitioner]
        raise DataError(
            f"{partitioner} partitioning of {n} samples into {num_partitions} partitions "
            f"failed: {e} ({advice})"
        ) from e


def clear_partition_cache() -> None:
    """Forget the partitions cached in this process."""
    _cache.clear()


def label_distribution(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-partition class counts, shape ``(len(parts), num_classes)``."""
    y = np.asarray(labels)
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])


def client_datasets(
    train: ArrayDataset,
    partition_id: int,
    num_partitions: int,
    *,
    partitioner: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_partition: int = 2,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Return client ``partition_id``'s local ``(train, test)`` split of its partition.

    The split is random but deterministic for ``(seed, partition_id)``. The local test set
    holds ``floor(test_fraction * size)`` samples (possibly none) and at least one sample is
    always left for training.
    """
    if not 0 <= partition_id < num_partitions:
        raise DataError(
            f"partition_id {partition_id} is out of range for {num_partitions} partitions"
        )
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"data.test_fraction: must be in [0, 1), got {test_fraction}")
    parts = partition(
        train.y,
        num_partitions,
        partitioner,
        alpha=alpha,
        classes_per_partition=classes_per_partition,
        seed=seed,
    )
    idx = parts[partition_id]
    # Own stream per client, so a client's split does not depend on how many others exist.
    perm = np.random.default_rng([seed, partition_id]).permutation(idx)
    n_test = min(int(len(idx) * test_fraction), len(idx) - 1)
    base = f"{train.name}/client{partition_id}"
    return (
        train.subset(perm[n_test:], name=f"{base}/train"),
        train.subset(perm[:n_test], name=f"{base}/test"),
    )


def local_split(
    data: ArrayDataset, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[ArrayDataset, ArrayDataset]:
    """A device's own data as its whole partition: the local ``(train, test)`` split of
    :func:`client_datasets` for partition 0 of 1, without running a partitioner (nothing to
    split between clients, so neither ``datasets`` nor ``flwr_datasets`` is imported)."""
    if not 0.0 <= test_fraction < 1.0:
        raise DataError(f"data.test_fraction: must be in [0, 1), got {test_fraction}")
    if len(data) == 0:
        raise DataError(f"dataset {data.name!r} is empty")
    perm = np.random.default_rng([seed, 0]).permutation(len(data))
    n_test = min(int(len(data) * test_fraction), len(data) - 1)
    base = f"{data.name}/local"
    return (
        data.subset(perm[n_test:], name=f"{base}/train"),
        data.subset(perm[:n_test], name=f"{base}/test"),
    )
