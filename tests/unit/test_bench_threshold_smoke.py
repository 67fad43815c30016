"""Smoke run of the threshold rows of benchmarks/he.py on a tiny model (not a timed test)."""

from __future__ import annotations

import math

from benchmarks.he import threshold_case


def test_threshold_benchmark_case_runs_and_reports_ratios() -> None:
    c = threshold_case(600, 4, 5, 3, reps=1, max_weight=50)
    assert c["clients"] == 4 and c["threshold"] == 3
    for key in ("upload_x_float32", "partial_x_float32", "client_cpu_x_shared"):
        assert math.isfinite(c[key]) and c[key] > 0
    assert c["max_abs_error"] <= 1.0
