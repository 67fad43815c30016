from pathlib import Path

import pytest

from fedpriv.config import RunConfig, apply_overrides, config_hash, config_to_dict, load_config
from fedpriv.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_builtin_default_matches_shipped_default_toml() -> None:
    assert load_config(ROOT / "simulations" / "default.toml") == RunConfig()


def test_overrides_are_typed_and_applied() -> None:
    cfg = load_config(
        None,
        [
            "rounds=3",
            "train.learning_rate=0.05",
            "encryption.scheme=ckks",
            "data.dataset=csv:/x.csv",
        ],
    )
    assert cfg.rounds == 3 and cfg.train.learning_rate == 0.05
    assert cfg.encryption.scheme == "ckks" and cfg.data.dataset == "csv:/x.csv"


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(
        'rounds = 0\nbogus = 1\n[train]\nbatch_size = "big"\nlearning_rate = -1\n'
        '[privacy]\ndelta = 2.0\n[encryption]\nscheme = "rsa"\n'
    )
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    msgs = ei.value.errors
    # type errors are collected together (range checks run once types are right)
    assert any("bogus" in m for m in msgs)
    assert any("train.batch_size" in m for m in msgs)
    assert any("encryption.scheme" in m for m in msgs)
    assert len(msgs) >= 3


def test_range_errors_are_all_listed() -> None:
    with pytest.raises(ConfigError) as ei:
        load_config(
            None,
            [
                "rounds=0",
                "train.learning_rate=-1",
                "privacy.delta=2.0",
                "federation.fraction_train=0",
            ],
        )
    text = str(ei.value)
    for key in ("rounds", "train.learning_rate", "privacy.delta", "federation.fraction_train"):
        assert key in text
    assert len(ei.value.errors) == 4


def test_dp_without_noise_is_refused() -> None:
    with pytest.raises(ConfigError, match="no DP"):
        load_config(None, ["privacy.noise_multiplier=0", "privacy.target_epsilon=0"])


def test_target_above_budget_is_refused() -> None:
    with pytest.raises(ConfigError, match="max_epsilon"):
        load_config(None, ["privacy.target_epsilon=20", "privacy.max_epsilon=10"])


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "b.toml"
    bad.write_text("rounds = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["rounds"])


def test_hash_is_stable_and_sensitive() -> None:
    a, b = RunConfig(), load_config(None, ["seed=1"])
    assert config_hash(a) == config_hash(RunConfig())
    assert config_hash(a) != config_hash(b)
    assert config_to_dict(a)["privacy"]["delta"] == 1e-5


def test_unknown_model_lists_available() -> None:
    with pytest.raises(ConfigError, match="available"):
        load_config(None, ["train.model=resnet9000"])
