"""Sweeps with the central DP-SGD baseline runner; the results page and results.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpriv.config import load_config
from fedpriv.errors import ConfigError
from fedpriv.experiments import load_sweep, run_sweep, summarize_sweep, write_results
from fedpriv.experiments.central import central_datasets, run_central
from fedpriv.privacy.accounting import DpEvent, opacus_epsilon
from fedpriv.privacy.rng import InsecureTestRandom

_BASE = """
name = "tiny"
rounds = 4
[data]
dataset = "digits"
partitioner = "iid"
[federation]
num_clients = 3
[train]
model = "logreg"
batch_size = 100
learning_rate = 2.0
[privacy]
mode = "distributed"
target_epsilon = 3.0
max_epsilon = 3.0
total_records = 1000
[encryption]
scheme = "bfv"
"""

_SWEEP = """
dataset = "digits-tiny"
base = "base.toml"
seeds = [0, 1]
[splits.iid]
"data.partitioner" = "iid"
[splits.dirichlet]
"data.partitioner" = "dirichlet"
[settings.central-eps3]
runner = "central"
"privacy.target_epsilon" = 3.0
[settings.central-off]
runner = "central"
"privacy.mode" = "off"
seeds = [0]
splits = ["iid"]
"""


def test_central_runner_matches_its_plan() -> None:
    cfg = load_config(
        None,
        [
            'data.dataset="digits"',
            "federation.num_clients=3",
            'train.model="logreg"',
            "train.batch_size=100",
            "rounds=5",
            'privacy.mode="distributed"',
            "privacy.target_epsilon=2.0",
            "privacy.total_records=1000",
        ],
    )
    train, evalset, where = central_datasets(cfg)
    assert where == "test" and len(evalset) > 0
    # the union of the clients' training partitions (their local test splits excluded)
    assert len(train) < 1797 * 0.8
    res = run_central(cfg, rng=InsecureTestRandom(1))
    assert res.sample_rate == pytest.approx(100 / len(train)) and res.steps == 5
    assert res.epsilon == opacus_epsilon([DpEvent(res.noise_multiplier, res.sample_rate, 5)], 1e-5)
    assert res.epsilon <= 2.0 and res.epsilon_pld <= res.epsilon * 1.02
    assert 0.2 < res.accuracy <= 1.0  # logistic regression learns digits in 5 noisy steps
    val = run_central(cfg, validation_fraction=0.2, rng=InsecureTestRandom(1))
    assert val.evaluated_on == "validation" and val.records < len(train)


def test_sweep_with_central_rows_writes_results_json(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(_BASE)
    (tmp_path / "sweep.toml").write_text(_SWEEP)
    runs = load_sweep(tmp_path / "sweep.toml")
    names = sorted((r.setting, r.split, r.seed) for r in runs)
    assert ("central-off", "iid", 0) in names and ("central-off", "dirichlet", 0) not in names
    assert len(runs) == 4 + 1 and all(r.runner == "central" for r in runs)
    out = tmp_path / "runs"
    counts = run_sweep(runs, out, log=lambda s: None)
    assert counts == {"done": 5, "skipped": 0, "failed": 0}
    assert run_sweep(runs, out, log=lambda s: None)["skipped"] == 5  # resumable
    rows = summarize_sweep(runs, out)
    by = {(r["setting"], r["split"]): r for r in rows}
    assert by[("central-eps3", "iid")]["privacy_mode"] == "central"
    assert by[("central-off", "iid")]["privacy_mode"] == "off"
    assert by[("central-eps3", "iid")]["seeds"] == 2
    write_results(rows, tmp_path / "docs", title="t")
    doc = json.loads((tmp_path / "docs" / "results.json").read_text())
    keys = {
        "dataset",
        "split",
        "num_clients",
        "privacy_mode",
        "target_epsilon",
        "encryption",
        "seeds",
        "accuracy_mean",
        "accuracy_std",
    }
    assert all(keys <= set(d) for d in doc) and len(doc) == 3
    row = next(d for d in doc if d["setting"] == "central-eps3" and d["split"] == "iid")
    assert row["dataset"] == "digits-tiny" and row["num_clients"] == 3
    assert row["target_epsilon"] == 3.0 and row["encryption"] == "off" and row["seeds"] == 2
    md = (tmp_path / "docs" / "results.md").read_text()
    assert "central-eps3" in md and (tmp_path / "docs" / "results_accuracy_vs_round.png").exists()


def test_sweep_rejects_an_unknown_runner(tmp_path: Path) -> None:
    (tmp_path / "base.toml").write_text(_BASE)
    (tmp_path / "sweep.toml").write_text(_SWEEP.replace('runner = "central"', 'runner = "x"', 1))
    with pytest.raises(ConfigError, match="runner"):
        load_sweep(tmp_path / "sweep.toml")
