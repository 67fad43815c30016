import subprocess
import sys

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
