"""Experiment sweeps: many simulations from one definition, resumable, with a results report."""

from fedpriv.experiments.sweep import (
    SweepRun,
    load_sweep,
    results_json,
    run_sweep,
    summarize_sweep,
    write_results,
)

__all__ = [
    "SweepRun",
    "load_sweep",
    "results_json",
    "run_sweep",
    "summarize_sweep",
    "write_results",
]
