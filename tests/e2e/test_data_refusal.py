"""A device whose data breaks the data owner's schema refuses to train; the others go on.

Real Flower simulation engine, BFV and record-level DP on. Three clients train on partitions of
the run's clean CSV (checked against ``data.schema``); client-2 is a device with its own data
file (node-local data and node-local schema, exactly what ``fedpriv client start --data
--schema`` configures) whose export is broken: a label typo and a column in other units.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpriv.apps import ClientSettings
from fedpriv.apps.client import handle_evaluate, handle_train
from fedpriv.config import load_config
from fedpriv.data.schema import check_data, infer_schema, load_schema
from fedpriv.privacy import read_chain
from fedpriv.report import REPORT_JSON, verify_run
from fedpriv.simulation import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]

BROKEN = "client-2"


def _write(path: Path, rows: list[list[object]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["age", "height_cm", "weight_kg", "label"])
        w.writerows(rows)


def _data(tmp: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(7)
    n = 480
    y = rng.integers(0, 3, n)
    age = rng.integers(20, 80, n)
    height = np.round(160 + 8 * y + rng.normal(0, 4, n), 1)
    weight = np.round(60 + 6 * y + rng.normal(0, 5, n), 1)
    rows = [
        [int(a), float(h), float(w), int(c)]
        for a, h, w, c in zip(age, height, weight, y, strict=True)
    ]
    clean, broken = tmp / "clean.csv", tmp / "device2.csv"
    _write(clean, rows)
    bad = [[a, round(h / 100, 3), w, c] for a, h, w, c in rows[:120]]  # metres, not cm
    bad[9][3] = "cat"  # a label typo
    _write(broken, bad)
    schema = tmp / "schema.json"
    infer_schema(f"csv:{clean}").save(schema)
    return clean, broken, schema


def wait_for_ray_exit(timeout: float = 120.0) -> None:
    """Give Ray's daemons time to exit on a loaded machine (the fixture then checks they did)."""
    from tests.conftest import processes_with_mark

    mark = os.environ.get("FEDPRIV_TEST_MARK", "")
    end = time.monotonic() + timeout
    while mark and processes_with_mark(mark) and time.monotonic() < end:
        time.sleep(1.0)


def _app(run: Path, broken: Path, schema: Path) -> ClientApp:
    keys, state = (run / "keys" / "client").resolve(), (run / "clients").resolve()
    shared = ClientSettings(keys, state)
    own = ClientSettings(keys, state, data=f"csv:{broken}")  # the device's own data
    app = ClientApp()

    def settings(context: Context) -> ClientSettings:
        if f"client-{context.node_config['partition-id']}" != BROKEN:
            return shared
        context.node_config["schema"] = str(schema)  # the device's own schema (node config)
        return own

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, settings(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, settings(context))

    return app


def test_a_device_with_broken_data_refuses_and_the_others_train(tmp_path: Path) -> None:
    clean, broken, schema = _data(tmp_path)
    expected = check_data(f"csv:{broken}", load_schema(schema)).failed_checks
    assert {"label-set", "scale:height_cm", "range:height_cm"} <= set(expected)
    cfg = load_config(
        None,
        [
            "name=data-refusal",
            "rounds=2",
            "federation.num_clients=4",
            "train.model=logreg",
            "train.local_epochs=1",
            "privacy.noise_multiplier=1.0",
            "data.partitioner=iid",
            f"data.dataset=csv:{clean}",
            f"data.schema={schema}",
        ],
    )
    run = tmp_path / "run"
    try:
        res = simulate(cfg, run, client_app=_app(run, broken, schema))
    finally:
        wait_for_ray_exit()
    reason = f"data check failed: {', '.join(expected)}"
    rounds = res.metrics["rounds"]
    assert len(rounds) == 2
    for r in rounds:
        assert (r["accepted"], r["refused"], r["failed"], r["rejected"]) == (3, 1, 0, 0)
        c = r["clients"][BROKEN]
        assert c["status"] == "refused" and c["reason"] == reason
        assert c["bytes_up"] == 0 and not c["steps"]
        others = [v for k, v in r["clients"].items() if k != BROKEN]
        assert all(v["status"] == "accepted" and v["steps"] > 0 for v in others)
    # Only the check names left the device: no value from the data in the reason.
    assert "cat" not in reason and "1." not in reason
    ledger = read_chain(run / "privacy_ledger.jsonl")
    mine = [e for e in ledger if e["client_id"] == BROKEN]
    assert [e["round"] for e in mine] == [1, 2]
    assert all(e["status"] == "refused" and e["reason"] == reason for e in mine)
    assert all(not e["trained"] and e["epsilon"] == 0.0 for e in mine)
    trained = [e for e in ledger if e["client_id"] != BROKEN]
    assert len(trained) == 6 and all(e["trained"] and e["epsilon"] > 0 for e in trained)
    egress = [json.loads(x) for x in (run / "egress.jsonl").read_text().splitlines()]
    assert not [e for e in egress if e["client_id"] == BROKEN and e["kind"] == "model-update"]
    # The signed report lists the refusals with their reason, not as spent budgets.
    doc = json.loads((run / REPORT_JSON).read_text())
    budget = doc["budget_policy"]
    assert {(x["client_id"], x["reason"]) for x in budget["refusals"]} == {(BROKEN, reason)}
    assert BROKEN not in budget["clients_at_budget"]
    assert verify_run(run).ok
    assert res.final_accuracy is not None and res.final_accuracy > 0.5
