"""The monitor's run-folder reader: files written while it reads, and the view it builds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fedpriv.fileio import atomic_write_text
from fedpriv.monitor.state import RunReader, find_run_dir
from fedpriv.privacy.ledger import HashChainWriter


def _round(n: int, refused: int = 0, loss: float = 0.5) -> dict[str, Any]:
    clients = {
        "client-0": {
            "status": "accepted",
            "reason": "",
            "epsilon": 0.5 * n,
            "bytes_up": 1000,
            "train_seconds": 0.2,
        },
        "client-1": {
            "status": "refused" if refused else "accepted",
            "reason": "data check failed: label-set" if refused else "",
            "epsilon": 0.0 if refused else 0.4 * n,
            "bytes_up": 0 if refused else 1000,
        },
    }
    return {
        "round": n,
        "sampled": 2,
        "accepted": 2 - refused,
        "refused": refused,
        "failed": 0,
        "rejected": 0,
        "federated_accuracy": 0.8,
        "federated_loss": loss,
        "seconds": 1.5,
        "aggregate_seconds": 0.1,
        "bytes_up_total": 2000 - 1000 * refused,
        "bytes_down_total": 4000,
        "global_bytes": 2000,
        "clients": clients,
    }


def _metrics(run: Path, rounds: list[dict[str, Any]], **extra: Any) -> None:
    doc = {"name": "t", "privacy_mode": "record", "max_epsilon": 4.0, "rounds": rounds, **extra}
    atomic_write_text(run / "metrics.json", json.dumps(doc), mode=0o644)


def test_missing_folder_then_config_then_rounds(tmp_path: Path) -> None:
    run = tmp_path / "run"
    reader = RunReader(run)
    assert reader.snapshot()["run"]["status"] == "waiting"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"name": "t", "rounds": 3}))
    snap = reader.snapshot()
    assert snap["run"]["status"] == "starting" and snap["run"]["rounds_total"] == 3
    _metrics(run, [_round(1)])
    snap = reader.snapshot()
    assert snap["run"]["status"] == "running" and snap["run"]["rounds_done"] == 1
    assert snap["run"]["progress"] == 1 / 3
    assert [c["id"] for c in snap["clients"]] == ["client-0", "client-1"]


def test_a_half_written_metrics_file_keeps_the_last_good_version(tmp_path: Path) -> None:
    _metrics(tmp_path, [_round(1)])
    reader = RunReader(tmp_path)
    assert reader.snapshot()["run"]["rounds_done"] == 1
    full = json.dumps({"name": "t", "rounds": [_round(1), _round(2)]})
    (tmp_path / "metrics.json").write_text(full[: len(full) // 2])  # a non-atomic writer, mid-way
    snap = reader.snapshot()
    assert snap["run"]["rounds_done"] == 1 and reader.torn_reads() == 1
    (tmp_path / "metrics.json").write_text(full)
    assert reader.snapshot()["run"]["rounds_done"] == 2


def test_a_partial_ledger_line_waits_for_its_newline(tmp_path: Path) -> None:
    w = HashChainWriter(tmp_path / "privacy_ledger.jsonl")
    w.append({"round": 1, "client_id": "client-0", "status": "accepted", "epsilon": 0.5})
    _metrics(tmp_path, [_round(1)])
    reader = RunReader(tmp_path)
    assert reader.snapshot()["totals"]["ledger_entries"] == 1
    line = json.dumps({"round": 2, "client_id": "client-0", "status": "accepted"})
    with (tmp_path / "privacy_ledger.jsonl").open("a") as f:
        f.write(line[:10])
        f.flush()
        snap = reader.snapshot()
        assert snap["totals"]["ledger_entries"] == 1 and snap["files"]["ledger_bad_lines"] == 0
        f.write(line[10:] + "\n")
    assert reader.snapshot()["totals"]["ledger_entries"] == 2


def test_a_replaced_ledger_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "privacy_ledger.jsonl"
    w = HashChainWriter(path)
    for r in (1, 2):
        w.append({"round": r, "client_id": "client-0", "status": "accepted", "epsilon": 0.5 * r})
    reader = RunReader(tmp_path)
    snap = reader.snapshot()
    assert snap["totals"]["ledger_entries"] == 2 and snap["totals"]["ledger_chain_ok"] is True
    tmp = tmp_path / "new.jsonl"
    tmp.write_text(path.read_text().splitlines()[0] + "\n")
    os.replace(tmp, path)
    assert reader.snapshot()["totals"]["ledger_entries"] == 1


def test_epsilon_comes_from_the_ledger_and_budget_use_is_relative(tmp_path: Path) -> None:
    w = HashChainWriter(tmp_path / "privacy_ledger.jsonl")
    w.append({"round": 1, "client_id": "client-0", "status": "accepted", "epsilon": 1.0})
    w.append({"round": 1, "client_id": "client-1", "status": "refused", "epsilon": 0.0})
    _metrics(tmp_path, [_round(1, refused=1)])
    snap = RunReader(tmp_path).snapshot()
    c0, c1 = snap["clients"]
    assert c0["epsilon"] == 1.0 and c0["budget_used"] == 0.25
    assert c1["refused"] == 1 and c1["last_reason"] == "data check failed: label-set"
    assert snap["events"] == [
        {
            "round": 1,
            "client_id": "client-1",
            "status": "refused",
            "reason": "data check failed: label-set",
        }
    ]
    assert snap["totals"]["ledger_refusals"] == 1


def test_drift_signals_are_aggregate_only(tmp_path: Path) -> None:
    _metrics(tmp_path, [_round(1, loss=0.4), _round(2, refused=1, loss=0.9)])
    sig = RunReader(tmp_path).snapshot()["signals"]
    kinds = {(s["round"], s["kind"]) for s in sig}
    assert kinds == {(2, "refusals"), (2, "loss-jump")}
    assert all("client-" not in s["text"] for s in sig)  # no per-client detail


def test_a_folder_of_runs_follows_the_newest(tmp_path: Path) -> None:
    assert find_run_dir(tmp_path) is None
    old, new = tmp_path / "a", tmp_path / "b"
    for d in (old, new):
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"name": d.name}))
    os.utime(old / "config.json", (1, 1))
    assert find_run_dir(tmp_path) == new
    assert RunReader(tmp_path).snapshot()["run"]["name"] == "b"
