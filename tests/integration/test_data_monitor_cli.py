"""``fedpriv data schema infer``, ``fedpriv data check`` and ``fedpriv monitor`` as real processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest


def _fedpriv(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def _write(path: Path, rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "height_cm", "label"])
        w.writerows(rows)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    rows: list[list[object]] = [[20 + i % 50, 150.0 + i % 40, i % 3] for i in range(90)]
    _write(tmp_path / "clean.csv", rows)
    broken = [list(r) for r in rows]
    broken[16][2] = "cat"
    broken[40][0] = 250
    for r in broken:
        r[1] = round(float(r[1]) / 100, 3)  # metres instead of centimetres
    for i in range(50, 90, 2):
        broken[i] = ["", "", ""]
    _write(tmp_path / "broken.csv", broken)
    return tmp_path


def test_infer_then_check_clean_and_broken_data(folder: Path) -> None:
    inf = _fedpriv("data", "schema", "infer", "csv:clean.csv", "--out", "schema.json", cwd=folder)
    assert inf.returncode == 0, inf.stderr
    assert "wrote schema.json: tabular data (2 features, 3 labels)" in inf.stdout
    doc = json.loads((folder / "schema.json").read_text())
    assert doc["format"] == "fedpriv-data-schema" and doc["version"] == 1
    again = _fedpriv("data", "schema", "infer", "csv:clean.csv", "--out", "schema.json", cwd=folder)
    assert again.returncode == 2 and "--force" in again.stderr

    ok = _fedpriv("data", "check", "csv:clean.csv", "--schema", "schema.json", cwd=folder)
    assert ok.returncode == 0 and "90 rows match schema.json" in ok.stdout, ok.stderr

    bad = _fedpriv("data", "check", "csv:broken.csv", "--schema", "schema.json", cwd=folder)
    assert bad.returncode == 3 and bad.stdout == ""
    err = bad.stderr
    for name in (
        "missing:age",
        "range:age",
        "missing:height_cm",
        "type:height_cm",
        "range:height_cm",
        "scale:height_cm",
        "missing:label",
        "label-set",
    ):
        assert f"  {name} " in err, name
    assert "8 checks failed" in err
    assert "column 'label', row 17 (file line 18)" in err and "'cat'" in err
    assert "column 'age', row 41 (file line 42)" in err


def test_unreadable_inputs_and_invalid_schema(folder: Path) -> None:
    (folder / "empty.csv").write_text("")
    assert (
        _fedpriv(
            "data", "schema", "infer", "csv:clean.csv", "--out", "s.json", cwd=folder
        ).returncode
        == 0
    )
    empty = _fedpriv("data", "check", "csv:empty.csv", "--schema", "s.json", cwd=folder)
    assert empty.returncode == 3 and "not-empty" in empty.stderr
    gone = _fedpriv("data", "check", "csv:gone.csv", "--schema", "s.json", cwd=folder)
    assert gone.returncode == 3 and "readable" in gone.stderr and "file not found" in gone.stderr
    (folder / "bad.json").write_text(json.dumps({"format": "fedpriv-data-schema", "version": 1}))
    inv = _fedpriv("data", "check", "csv:clean.csv", "--schema", "bad.json", cwd=folder)
    assert inv.returncode == 2 and "invalid configuration" in inv.stderr and "label" in inv.stderr
    typo = _fedpriv("data", "schema", "infer", "csv:broken.csv", "--out", "t.json", cwd=folder)
    assert typo.returncode == 3 and "'cat'" in typo.stderr


def test_simulate_refuses_a_dataset_that_fails_its_schema(folder: Path) -> None:
    assert (
        _fedpriv(
            "data", "schema", "infer", "csv:clean.csv", "--out", "s.json", cwd=folder
        ).returncode
        == 0
    )
    sim = _fedpriv(
        "simulate",
        "--set",
        "data.dataset=csv:broken.csv",
        "--set",
        "data.schema=s.json",
        "--out",
        "run",
        cwd=folder,
    )
    assert sim.returncode == 3 and "label-set" in sim.stderr and "range:age" in sim.stderr
    assert not (folder / "run").exists(), "nothing may start on data its schema rejects"
    cfg = _fedpriv("simulate", "--set", "data.schema=nope.json", "--out", "run", cwd=folder)
    assert cfg.returncode == 2 and "data.schema" in cfg.stderr and "not found" in cfg.stderr


def test_monitor_serves_a_run_folder_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "cli", "rounds": 2}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedpriv.cli.main", "monitor", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fedpriv monitor: http://127.0.0.1:"), line
        url = line.split()[2]
        for _ in range(50):
            try:
                with urllib.request.urlopen(url + "api/snapshot", timeout=5) as r:
                    snap = json.loads(r.read())
                break
            except OSError:
                time.sleep(0.1)
        assert snap["run"]["name"] == "cli" and snap["run"]["status"] == "starting"
        with urllib.request.urlopen(url, timeout=5) as r:
            assert "fedpriv monitor" in r.read().decode()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None and "monitor stopped" in proc.stdout.read()


@pytest.mark.slow
def test_simulate_with_monitor_prints_the_url_and_stops_with_the_run(tmp_path: Path) -> None:
    sim = _fedpriv(
        "simulate",
        "--monitor",
        "--quiet",
        "--set",
        "rounds=1",
        "--set",
        "federation.num_clients=2",
        "--set",
        "train.model=logreg",
        "--set",
        "privacy.mode=off",
        "--set",
        "encryption.scheme=off",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert sim.returncode == 0, sim.stderr[-3000:]
    line = next(x for x in sim.stdout.splitlines() if x.startswith("monitor: "))
    url = line.split()[1]
    assert url.startswith("http://127.0.0.1:") and "watching run" in line
    with pytest.raises(OSError):
        urllib.request.urlopen(url, timeout=5)  # stopped with the run
