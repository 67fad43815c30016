"""Datasets for fedpriv: loading, per-process caching and federated partitioning.

numpy only at import time (no torch), so config validation and data tools stay light;
scikit-learn, ``datasets`` and ``flwr_datasets`` are imported when first needed.
"""

from fedpriv.data.dataset import ArrayDataset
from fedpriv.data.idx import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, read_idx, write_idx
from fedpriv.data.loaders import MNIST_MEAN, MNIST_STD, clear_cache, from_hf_dataset, load_dataset
from fedpriv.data.partitioning import (
    PARTITIONERS,
    clear_partition_cache,
    client_datasets,
    label_distribution,
    local_split,
    partition,
)

__all__ = [
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MNIST_MEAN",
    "MNIST_STD",
    "PARTITIONERS",
    "ArrayDataset",
    "clear_cache",
    "clear_partition_cache",
    "client_datasets",
    "from_hf_dataset",
    "label_distribution",
    "load_dataset",
    "local_split",
    "partition",
    "read_idx",
    "write_idx",
]
