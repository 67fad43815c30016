"""Everything a run checks before it writes anything: data, partitions, model, value range.

:func:`prepare_run` loads the config's dataset, splits it over the clients and builds the
initial model, so that a data error or a config that cannot work (a ``value_range`` that would
clip most weights) fails before a run folder exists. :func:`deal_run_keys` then deals the
simulation keys into a run folder (the data owners' side of a simulation).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedpriv.config import RunConfig
from fedpriv.errors import ConfigError
from fedpriv.runs.folder import RunDir

__all__ = ["PreparedRun", "check_value_range", "deal_run_keys", "partition_sizes", "prepare_run"]

log = logging.getLogger("fedpriv.runs")

# A value range that clips more than this share of the initial weights is refused.
MAX_CLIPPED_SHARE = 0.5


@dataclass(frozen=True)
class PreparedRun:
    """The run's data and initial model, checked."""

    config: RunConfig
    train: Any
    test: Any
    sizes: list[int]
    num_values: int

    @property
    def max_weight(self) -> int:
        """Public bound on a client's aggregation weight (the largest partition by default)."""
        return int(self.config.encryption.max_examples_per_client or max(self.sizes))


def client_partitions(cfg: RunConfig, train: Any) -> list[Any]:
    """Each client's training partition (after its local test split), as the run splits it."""
    from fedpriv.data import client_datasets

    d = cfg.data
    return [
        client_datasets(
            train,
            i,
            cfg.federation.num_clients,
            partitioner=d.partitioner,
            alpha=d.alpha,
            classes_per_partition=d.classes_per_partition,
            test_fraction=d.test_fraction,
            seed=cfg.seed,
        )[0]
        for i in range(cfg.federation.num_clients)
    ]


def partition_sizes(cfg: RunConfig, train: Any) -> list[int]:
    """Training examples of each client's partition (after its local test split)."""
    return [len(p) for p in client_partitions(cfg, train)]


def check_value_range(cfg: RunConfig, weights: np.ndarray) -> None:
    """Refuse an ``encryption.value_range`` that would clip most of the model's weights.

    Raises
    ------
    ConfigError
        With the share clipped and the weight range observed in the initial model.
    """
    if cfg.encryption.scheme == "off" or weights.size == 0:
        return
    vr = cfg.encryption.value_range
    clipped = float(np.mean(np.abs(weights) > vr))
    if clipped > MAX_CLIPPED_SHARE:
        lo, hi = float(weights.min()), float(weights.max())
        raise ConfigError(
            f"encryption.value_range = {vr:g} would clip {clipped:.0%} of the initial model's "
            f"{weights.size:,} weights (observed range {lo:.3g} to {hi:.3g}); use a value_range "
            f"well above {max(abs(lo), abs(hi)):.3g} (default 4.0)"
        )


def prepare_run(cfg: RunConfig) -> PreparedRun:
    """Load and split the data, build the initial model, check the value range.

    Raises
    ------
    DataError
        The dataset cannot be loaded or split.
    ConfigError
        The config cannot work with this data or model.
    """
    from fedpriv.data import load_dataset
    from fedpriv.models import build_model, get_flat_params

    if cfg.data.schema:  # clients may run in another folder: record the absolute path
        schema = str(Path(cfg.data.schema).expanduser().resolve())
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, schema=schema))
    labels = _checked_labels(cfg)
    d = cfg.data
    train, test = load_dataset(
        d.dataset,
        label_column=d.label_column,
        holdout_fraction=d.holdout_fraction,
        seed=cfg.seed,
        max_samples=d.max_samples,
        validation_fraction=d.validation_fraction,
        labels=labels,
    )
    sizes = partition_sizes(cfg, train)
    if cfg.distributed_dp and cfg.privacy.total_records == 0:
        # N is public: the data owners (here, the runner that deals their keys) declare it.
        cfg = dataclasses.replace(
            cfg, privacy=dataclasses.replace(cfg.privacy, total_records=sum(sizes))
        )
    model = build_model(cfg.train.model, train.input_shape, train.num_classes, seed=cfg.seed)
    weights = get_flat_params(model)
    check_value_range(cfg, weights)
    return PreparedRun(cfg, train, test, sizes, int(weights.size))


def _checked_labels(cfg: RunConfig) -> tuple[str, ...] | None:
    """With ``data.schema``: check the run's dataset (every violation, exit 3) and return the
    schema's label set; the run must not start on data its own schema rejects."""
    if not cfg.data.schema:
        return None
    from fedpriv.data.schema import check_data, load_schema

    data_schema = load_schema(cfg.data.schema)
    check_data(cfg.data.dataset, data_schema).raise_if_failed()
    return data_schema.label.values


def deal_run_keys(prep: PreparedRun, rd: RunDir) -> None:
    """Deal simulation keys into ``rd.keys`` (complete or not at all: a Ctrl-C while dealing
    leaves no half key folder)."""
    from fedpriv.keys import deal_keys

    tmp = rd.root / ".keys.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    deal_keys(prep.config, num_values=prep.num_values, max_weight=prep.max_weight, out=tmp)
    Path(tmp).rename(rd.keys)
