import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv.cli.main import main


def test_invalid_config_lists_every_error_and_exits_2(capsys, tmp_path) -> None:
    rc = main(
        [
            "simulate",
            "--out",
            str(tmp_path / "x"),
            "--set",
            "rounds=0",
            "--set",
            "train.batch_size=-3",
            "--set",
            "privacy.delta=5",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert (
        "3 problem(s)" in err
        and "rounds" in err
        and "train.batch_size" in err
        and "privacy.delta" in err
    )
    assert not (tmp_path / "x").exists(), "nothing may run on an invalid config"


def test_unknown_key_in_file(tmp_path, capsys) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train]\nlearnin_rate = 0.1\n")
    assert main(["simulate", "--config", str(p)]) == 2
    assert "train.learnin_rate: unknown key" in capsys.readouterr().err


def test_module_entry_point_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "simulate" in out.stdout


# ----------------------------------------------------------------------------- --out, checked first
def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_out_that_is_a_file_exits_2_and_is_left_alone(tmp_path: Path, capsys) -> None:
    f = tmp_path / "afile"
    f.write_text("mine")
    assert main(["simulate", "--out", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert f.read_text() == "mine"


def test_out_that_is_a_non_empty_folder_exits_2_and_is_left_alone(tmp_path: Path, capsys) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["simulate", "--out", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert _files(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize(
    "overrides",
    [
        ["train.learning_rate=inf"],
        ["privacy.noise_multiplier=inf"],
        ["privacy.target_epsilon=inf", "privacy.max_epsilon=inf"],
        ["encryption.value_range=1e-30"],
    ],
)
def test_bad_numbers_exit_2_and_leave_nothing(tmp_path: Path, capsys, overrides) -> None:
    out = tmp_path / "run"
    out.mkdir()  # an empty --out stays empty
    args = ["simulate", "--out", str(out)]
    for o in overrides:
        args += ["--set", o]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "observed range" in err if "value_range" in overrides[0] else "finite number" in err
    assert _files(out) == []


# ----------------------------------------------------------------------------- wiring
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["simulate", "--resume"], "--resume needs --out"),
        (["simulate", "--resume", "--out", "{tmp}", "--set", "rounds=2"], "drop --config/--set"),
        (["simulate", "--resume", "--out", "{tmp}"], "no run to resume"),
        (["simulate", "--engine", "flwr", "--project", "{tmp}/nowhere"], "not a fedpriv project"),
        (["simulate", "--project", "{tmp}"], "only used with --engine flwr"),
        (["run", "--resume", "--superlink", "127.0.0.1:1", "--bundle", "{tmp}"], "needs --out"),
    ],
)
def test_argument_mistakes_exit_2_before_running(
    tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_engine_and_project_reach_simulate(monkeypatch, tmp_path: Path) -> None:
    """What the CLI passes on (the runs themselves are in the e2e tests)."""
    import fedpriv.simulation

    seen: dict[str, object] = {}

    def fake(cfg, out, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw, out=out)
        raise fedpriv.simulation.ConfigError("stop here")

    monkeypatch.setattr(fedpriv.simulation, "simulate", fake)
    root = Path(__file__).resolve().parents[2]
    main(["simulate", "--engine", "flwr", "--project", str(root), "--out", str(tmp_path / "r")])
    assert seen["engine"] == "flwr" and seen["project"] == root and seen["resume"] is False
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "config.toml").write_text('name = "x"\n')
    main(["simulate", "--resume", "--out", str(tmp_path / "r")])
    assert seen["resume"] is True and seen["out"] == tmp_path / "r"
