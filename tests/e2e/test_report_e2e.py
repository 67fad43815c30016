"""The privacy report of real simulated runs: built by every run, verified, rendered in Chromium.

Three real runs in all: the README's default (DP + BFV, shared by most tests), a small
non-private one, and a small one where a client hits its budget.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fedpriv.config import load_config
from fedpriv.data import load_dataset
from fedpriv.privacy import DpEvent, opacus_epsilon
from fedpriv.privacy.training import sample_rate, steps_per_round
from fedpriv.report import REPORT_HTML, REPORT_JSON, validate_report, verify_run
from fedpriv.report.markup import lookup
from fedpriv.runs.prepare import partition_sizes
from fedpriv.simulation import simulate

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private $FEDPRIV_HOME for this module's signing keys (in-process and subprocesses)."""
    h = tmp_path_factory.mktemp("fedpriv-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDPRIV_HOME", str(h))
        yield h


@pytest.fixture(scope="module")
def default_run(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """`fedpriv simulate` exactly as the README runs it; the report comes with the run."""
    out = tmp_path_factory.mktemp("default") / "run"
    env = {**os.environ, "FEDPRIV_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    proc = _cli("simulate", "--out", str(out), "--quiet", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": out, "env": env, "seconds": time.perf_counter() - t0}


def test_default_run_ships_a_report_that_verifies(default_run: dict[str, Any]) -> None:
    run, env = default_run["dir"], default_run["env"]
    doc = json.loads((run / REPORT_JSON).read_text(encoding="utf-8"))
    assert validate_report(doc) == []
    s = doc["summary"]
    assert s["dp"] and s["encrypted"] and s["scheme"] == "bfv" and s["clients"] == 10
    assert s["tier"] == 2 and 0 < s["epsilon_min"] <= s["epsilon_max"] <= 8.0 + 1e-6
    assert doc["accounting"]["cross_check"]["all_at_or_above_lower_bound"] is True
    assert doc["encryption"]["security"]["level_bits"] == 128
    t0 = time.perf_counter()
    proc = _cli("report", "verify", str(run), env=env)
    verify_s = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFIED" in proc.stdout and proc.stdout.count("[PASS]") >= 12
    t0 = time.perf_counter()
    built = _cli("report", "build", str(run), env=env)
    build_s = time.perf_counter() - t0
    assert built.returncode == 0, built.stderr
    assert doc["sign_off"]["fingerprint"] in built.stdout  # the run's own key signs the rebuild
    shown = _cli("report", "show", str(run), env={**env, "COLUMNS": "200"})
    assert shown.returncode == 0 and "weakest guarantee" in shown.stdout
    print(
        f"\nreport: {(run / REPORT_JSON).stat().st_size:,} B JSON,"
        f" {(run / REPORT_HTML).stat().st_size:,} B HTML; CLI build {build_s:.1f}s,"
        f" CLI verify {verify_s:.1f}s (both include interpreter start-up)"
    )


def _flip(data: bytes, pos: int) -> bytes:
    b = data[pos]
    new = ord("0") + (b - ord("0") + 1) % 10 if chr(b).isdigit() else b ^ 0x01
    return data[:pos] + bytes([new]) + data[pos + 1 :]


@pytest.mark.parametrize(
    ("name", "check"),
    [
        (REPORT_JSON, {"report file", "signature", "schema"}),
        ("privacy_ledger.jsonl", {"privacy ledger"}),
        ("egress.jsonl", {"egress record"}),
    ],
)
def test_tampering_with_the_default_run_fails(
    default_run: dict[str, Any], tmp_path: Path, name: str, check: set[str]
) -> None:
    data = (default_run["dir"] / name).read_bytes()
    m = re.search(rb'"epsilon": ([0-9.]{6,})', data) or re.search(rb'"bytes": ([0-9]+)', data)
    assert m is not None
    positions = [m.start(1) + len(m.group(1)) // 2]  # the middle of an epsilon value
    positions += [round(i * (len(data) - 1) / 5) for i in range(6)]
    for pos in positions:
        run = tmp_path / f"run-{pos}"
        shutil.copytree(default_run["dir"], run)
        (run / name).write_bytes(_flip(data, pos))
        result = verify_run(run)
        assert not result.ok and {c.name for c in result.failures} & check, (name, pos)


class _Fields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str, str]] = []
        self._open: tuple[str, str] | None = None
        self.headline = ""
        self._in_headline = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "data-field" in a:
            self._open = (str(a["data-field"]), str(a["data-value"]))
        if a.get("id") == "headline":
            self._in_headline = True

    def handle_endtag(self, tag: str) -> None:
        self._in_headline = False

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self.fields.append((*self._open, data))
            self._open = None
        if self._in_headline:
            self.headline += data


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI: `make install-dev` installs it")
        pytest.skip("Chromium is not installed (make install-dev installs it)")
    return exe


def _chrome(exe: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                *args,
            ],
            capture_output=True,
            timeout=180,
        )


def test_html_renders_in_chromium_and_its_numbers_match_the_json(
    default_run: dict[str, Any], tmp_path: Path
) -> None:
    from PIL import Image, ImageStat

    exe = _chromium()
    run = default_run["dir"]
    doc = json.loads((run / REPORT_JSON).read_text(encoding="utf-8"))
    url = (run / REPORT_HTML).resolve().as_uri()
    shot = tmp_path / "report.png"
    proc = _chrome(exe, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.exists(), proc.stderr.decode(errors="replace")[-2000:]
    img = Image.open(shot).convert("L")
    assert img.size == (1280, 2000)
    # a rendered page, not a blank or error screen: plenty of ink and contrast
    assert ImageStat.Stat(img).stddev[0] > 30 and shot.stat().st_size > 60_000
    keep = os.environ.get("FEDPRIV_REPORT_SCREENSHOT")
    if keep:
        shutil.copy(shot, keep)
    dom = _chrome(exe, "--dump-dom", url).stdout.decode("utf-8")
    parser = _Fields()
    parser.feed(dom)
    seen = {path for path, _, _ in parser.fields}
    assert {
        "summary.epsilon_max",
        "summary.epsilon_min",
        "summary.delta",
        "summary.max_epsilon",
        "summary.tier",
        "summary.final_accuracy",
        "sign_off.fingerprint",
    } <= seen
    for path, value, text in parser.fields:
        want = lookup(doc, path)
        assert json.loads(value) == want, path
        if path in ("summary.epsilon_max", "summary.epsilon_min"):
            assert text == f"{want:.2f}", (path, text)
        if path == "summary.final_accuracy":
            assert text == f"{100 * want:.1f}%"
    assert parser.headline == doc["summary"]["headline"]


@pytest.mark.usefixtures("no_leftover_processes")
def test_non_private_run_report_validates(home: Path, tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "name=plain",
            "rounds=2",
            "federation.num_clients=3",
            "train.model=logreg",
            "privacy.mode=off",
            "encryption.scheme=off",
        ],
    )
    res = simulate(cfg, tmp_path / "plain")
    doc = json.loads((res.run_dir / REPORT_JSON).read_text(encoding="utf-8"))
    assert validate_report(doc) == []
    assert doc["summary"]["dp"] is False and doc["summary"]["encrypted"] is False
    assert "OFF" in doc["summary"]["headline"]
    result = verify_run(res.run_dir)
    assert result.ok, [(c.name, c.detail, c.problems) for c in result.failures]


@pytest.mark.usefixtures("no_leftover_processes")
def test_budget_run_report_validates_and_lists_refusals(home: Path, tmp_path: Path) -> None:
    base = [
        "name=budget",
        "rounds=3",
        "federation.num_clients=4",
        "train.model=logreg",
        "privacy.noise_multiplier=1.0",
        "encryption.scheme=ckks",
    ]
    cfg = load_config(None, base)
    train, _ = load_dataset("digits", seed=cfg.seed)

    def eps_after(n: int, rounds: int) -> float:
        b, e = cfg.train.batch_size, cfg.train.local_epochs
        ev = DpEvent(1.0, sample_rate(n, b), steps_per_round(n, b, e))
        return opacus_epsilon([ev] * rounds, cfg.privacy.delta, cfg.privacy.accountant)

    after2 = sorted(eps_after(n, 2) for n in partition_sizes(cfg, train))
    budget = (after2[0] + after2[-1]) / 2
    cfg = load_config(
        None, [*base, f"privacy.max_epsilon={budget}", f"privacy.target_epsilon={budget}"]
    )
    res = simulate(cfg, tmp_path / "budget")
    doc = json.loads((res.run_dir / REPORT_JSON).read_text(encoding="utf-8"))
    assert validate_report(doc) == []
    b = doc["budget_policy"]
    assert b["refusals"] and b["clients_at_budget"]
    assert doc["summary"]["refusals"] == len(b["refusals"]) >= 1
    assert doc["summary"]["epsilon_max"] <= budget + 1e-9
    assert doc["encryption"]["scheme"] == "ckks"
    result = verify_run(res.run_dir)
    assert result.ok, [(c.name, c.detail, c.problems) for c in result.failures]
