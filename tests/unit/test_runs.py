"""The run lifecycle pieces that need no engine: run-folder checks, the typed Flower run config,
RunConfig.replace, non-finite numbers, the value-range check, RunResult."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedpriv.config import RunConfig, load_config
from fedpriv.errors import ConfigError, StateError
from fedpriv.runs import FlowerRunConfig, RunResult, check_run_dir, default_run_dir, write_config
from fedpriv.runs.prepare import check_value_range


# ----------------------------------------------------------------------------- run folder
def test_check_run_dir_refuses_a_file_and_a_non_empty_folder(tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_run_dir(f)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    with pytest.raises(ConfigError, match=r"not empty.*--resume"):
        check_run_dir(full)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_run_dir(empty) == empty
    assert check_run_dir(tmp_path / "new") == tmp_path / "new"
    assert not (tmp_path / "new").exists(), "checking must not create anything"


def test_resume_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no run to resume"):
        check_run_dir(tmp_path, resume=True)
    write_config(RunConfig(), tmp_path)
    assert check_run_dir(tmp_path, resume=True) == tmp_path
    assert load_config(tmp_path / "config.toml") == RunConfig()


def test_default_run_dir_names() -> None:
    local = default_run_dir("eps3")
    assert local.parent == Path("runs") and local.name.endswith("-eps3")
    flwr = default_run_dir(run_id=42)
    assert flwr.is_absolute() and flwr.name == "flwr-42"
    assert default_run_dir(run_id=42) == flwr  # ServerApp and ClientApps agree


# ----------------------------------------------------------------------------- Flower run config
def test_flower_run_config_round_trip(tmp_path: Path) -> None:
    import tomllib

    rc = FlowerRunConfig(
        fedpriv_config="/x/exp.toml",
        keys_dir="/x/keys",
        run_dir='/x/run "1"',
        resume=True,
        node_wait_s=30,
        allowed_nodes="3, 5",
        node_map="client-0=3,client-1=5",
    )
    back = FlowerRunConfig.from_mapping(tomllib.loads(rc.write(tmp_path / "rc.toml").read_text()))
    assert back == rc
    assert back.allowed_node_ids() == {3, 5}
    assert back.node_ids() == {"client-0": 3, "client-1": 5}
    assert back.run_folder(7) == Path("/", "x", 'run "1"')  # quotes survive the TOML round trip
    assert FlowerRunConfig().run_folder(7) == default_run_dir(run_id=7)


def test_flower_run_config_lists_every_bad_key() -> None:
    with pytest.raises(ConfigError) as ei:
        FlowerRunConfig.from_mapping({"resume": "yes", "node-wait-s": "x", "keys-dir": 3})
    assert len(ei.value.errors) == 3
    with pytest.raises(ConfigError) as ei:
        FlowerRunConfig.from_mapping(
            {"fedpriv-task": "mine", "resume": True, "allowed-nodes": "1,x", "node-map": "c0"}
        )
    text = str(ei.value)
    for what in ("fedpriv-task", "needs run-dir", "allowed-nodes", "node-map"):
        assert what in text


def test_server_settings_read_resume_from_the_context(tmp_path: Path) -> None:
    """`ServerSettings.from_context` reads every key, `resume` included."""
    from types import SimpleNamespace

    from fedpriv.apps import ServerSettings
    from fedpriv.keys import deal_keys

    deal_keys(RunConfig(), num_values=10, max_weight=5, out=tmp_path / "keys")
    write_config(RunConfig(name="x"), tmp_path)
    ctx = SimpleNamespace(
        run_id=1,
        run_config=FlowerRunConfig(
            keys_dir=str(tmp_path / "keys"),
            run_dir=str(tmp_path),
            resume=True,
            node_wait_s=12.0,
        ).to_mapping(),
    )
    s = ServerSettings.from_context(ctx)  # type: ignore[arg-type]
    assert s.resume is True and s.run_dir == tmp_path and s.node_wait_timeout == 12.0
    assert s.params_path == tmp_path / "keys" / "server" / "params.json"
    assert s.config.name == "x"  # a resumed run uses its own config


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "override",
    [
        "train.learning_rate=inf",
        "privacy.noise_multiplier=inf",
        "privacy.target_epsilon=inf",
        "privacy.max_epsilon=inf",
        "train.learning_rate=nan",
        "encryption.value_range=-inf",
    ],
)
def test_non_finite_numbers_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match="finite number"):
        load_config(None, [override])


def test_replace_is_validated_and_takes_sections_or_dotted_keys() -> None:
    cfg = RunConfig()
    a = cfg.replace(rounds=3, privacy={"target_epsilon": 3})
    b = cfg.replace(**{"rounds": 3, "privacy.target_epsilon": 3})
    assert a == b and a.rounds == 3 and a.privacy.target_epsilon == 3.0
    assert a.privacy.max_epsilon == cfg.privacy.max_epsilon  # a section dict is merged
    assert cfg.rounds == 5  # frozen: the original is unchanged
    with pytest.raises(ConfigError) as ei:
        cfg.replace(rounds=0, train={"learning_rate": math.inf}, bogus=1)
    text = str(ei.value)
    assert "3 problem(s)" in text
    for key in ("rounds", "train.learning_rate", "bogus"):
        assert key in text


# ----------------------------------------------------------------------------- value range
def test_a_value_range_that_clips_most_weights_is_refused() -> None:
    w = np.linspace(-0.4, 0.35, 1000).astype(np.float32)
    check_value_range(RunConfig(), w)  # 4.0 clips nothing
    tiny = RunConfig().replace(encryption={"value_range": 1e-30})
    with pytest.raises(ConfigError, match=r"would clip 100% .*observed range -0.4 to 0.35"):
        check_value_range(tiny, w)
    check_value_range(tiny.replace(encryption={"scheme": "off"}), w)  # nothing is encoded


def test_prepare_run_checks_the_value_range_before_anything_is_written(tmp_path: Path) -> None:
    from fedpriv.simulation import simulate

    cfg = RunConfig().replace(encryption={"value_range": 1e-30})
    with pytest.raises(ConfigError, match="observed range"):
        simulate(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- RunResult
def test_run_result_reads_a_run_folder(tmp_path: Path) -> None:
    write_config(RunConfig(name="r"), tmp_path)
    client = {"status": "accepted", "epsilon": 1.5, "bytes_up": 10, "bytes_down": 0}
    doc = {
        "wall_seconds": 3.0,
        "stop_reason": "",
        "rounds": [
            {
                "round": 1,
                "heldout_accuracy": 0.5,
                "accepted": 2,
                "sampled": 2,
                "refused": 0,
                "rejected": 0,
                "failed": 0,
                "bytes_up_total": 20,
                "bytes_down_total": 0,
                "seconds": 1.0,
                "clients": {"client-0": client, "client-1": {**client, "epsilon": 1.2}},
            },
            {
                "round": 2,
                "heldout_accuracy": 0.7,
                "accepted": 1,
                "sampled": 2,
                "refused": 1,
                "rejected": 0,
                "failed": 0,
                "bytes_up_total": 10,
                "bytes_down_total": 40,
                "seconds": 1.0,
                "clients": {
                    "client-0": {**client, "epsilon": 2.5},
                    "client-1": {**client, "status": "refused", "epsilon": 1.2},
                },
            },
        ],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    res = RunResult.from_run_dir(tmp_path)
    assert res.config.name == "r" and res.accuracy == [0.5, 0.7] and res.final_accuracy == 0.7
    assert dict(res.epsilon) == {"client-0": 2.5, "client-1": 1.2}
    assert res.rounds[1].refused == 1 and res.rounds[1].bytes_down == 40
    assert res.max_epsilon == 2.5 and res.report_html == tmp_path / "privacy_report.html"
    with pytest.raises(AttributeError):
        res.stop_reason = "x"  # type: ignore[misc]
    with pytest.raises(StateError):
        RunResult.from_run_dir(tmp_path / "nothing")
