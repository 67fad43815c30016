"""`fedpriv report build|show|verify` on a synthetic run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedpriv.cli.main import main
from fedpriv.report import REPORT_HTML, REPORT_JSON
from tests.unit.test_report_synthetic import make_run


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDPRIV_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps at the terminal width
    return make_run(tmp_path / "run")


def test_build_show_verify(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "show", str(run)]) == 7  # nothing built yet: says how to build
    assert "fedpriv report build" in capsys.readouterr().err
    assert main(["report", "build", str(run), "--purpose", "study", "--retention", "90 days"]) == 0
    out = capsys.readouterr().out
    fp = json.loads((run / REPORT_JSON).read_text())["sign_off"]["fingerprint"]
    assert fp in out and "private key" in out and (run / REPORT_HTML).exists()
    assert main(["report", "show", str(run)]) == 0
    out = capsys.readouterr().out
    assert "weakest guarantee" in out and "client-2" in out and fp in out
    assert main(["report", "verify", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["ok"]
    status = {c["name"]: c["status"] for c in result["checks"]}
    # a synthetic run has no client state folders: nobody exported a chain head (a warning)
    assert status.pop("client heads") == "warn"
    assert set(status.values()) <= {"pass", "skip"}
    doc = json.loads((run / REPORT_JSON).read_text())
    assert doc["roles"]["purpose"] == "study" and doc["retention"]["policy"] == "90 days"


def test_verify_as_a_third_party(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "build", str(run)]) == 0
    fp = json.loads((run / REPORT_JSON).read_text())["sign_off"]["fingerprint"]
    capsys.readouterr()
    assert main(["report", "verify", str(run), "--no-local-trust"]) == 9
    out = capsys.readouterr().out
    assert "[FAIL] signing key" in out and "NOT a key you trust" in out
    assert main(["report", "verify", str(run), "--no-local-trust", "--allow-unknown-key"]) == 0
    assert "[FLAG] signing key" in capsys.readouterr().out
    assert main(["report", "verify", str(run), "--no-local-trust", "--trusted-key", fp]) == 0
    assert main(["report", "verify", str(run), "--trusted-key", "not-a-key"]) == 9


def test_verify_without_a_report(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "verify", str(run)]) == 9
    out = capsys.readouterr().out
    assert "[FAIL] report file" in out and "fedpriv report build" in out
    # the records themselves are still checked
    assert "[PASS] privacy ledger" in out and "[PASS] epsilon (reporting accountant)" in out
