"""Smoke run of every benchmark script on tiny sizes: each runs and writes its JSON.

Not a timed test: nothing here checks a figure, only that the scripts still work (they are the
only tool that measures the performance targets) and that ``benchmarks.tables`` turns their
result files into ``targets.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NAMES = (
    "dp",
    "he",
    "edge",
    "round",
    "distributed_round",
    "scale",
)
TARGETS = (
    "dp_round",
    "dp_step",
    "edge",
    "upload_100",
    "threshold_upload",
    "distributed_round",
    "scale_60k",
)


def _run(args: list[str], out: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FEDPRIV_BENCH_RESULTS": str(out),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"{args}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_benchmark_script_smoke_run_writes_its_json(name: str, tmp_path: Path) -> None:
    proc = _run([f"benchmarks.{name}", "--smoke"], tmp_path)
    doc = json.loads((tmp_path / f"{name}_smoke.json").read_text())
    assert doc["benchmark"] == f"{name}_smoke"
    assert doc["machine"]["logical_cpus"] >= 1 and "loadavg_at_start" in doc["machine"]
    if name == "dp":
        assert "target: default-model DP step / plain = " in proc.stdout
        assert doc["models"]["cnn 8x8 (default)"]["auto_mode"] == "fused"
    if name == "edge":
        assert doc["results"]["DP + BFV (default)"]["forbidden_loaded"] == []


def test_tables_write_one_target_each_from_the_result_files(tmp_path: Path) -> None:
    (tmp_path / "dp.json").write_text(json.dumps({"target": {"measured": 1.5}}))
    (tmp_path / "edge.json").write_text(
        json.dumps(
            {
                "target": {"peak_mb": 450.0},
                "results": {"DP + BFV (default)": {"forbidden_loaded": []}},
            }
        )
    )
    _run(["benchmarks.tables"], tmp_path, timeout=300)
    rows = json.loads((tmp_path / "targets.json").read_text())
    assert [r["name"] for r in rows] == list(TARGETS)
    assert all(set(r) == {"name", "goal", "measured", "unit", "met"} for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["dp_step"]["measured"] == 1.5 and by["dp_step"]["met"] is True
    assert by["edge"]["measured"] == 450.0 and by["edge"]["met"] is False
    assert by["scale_60k"]["met"] is False  # not measured here
