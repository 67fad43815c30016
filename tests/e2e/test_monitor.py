"""The monitor page in headless Chromium while a real simulation runs.

The simulation (Flower's engine, BFV, DP; one device with a broken export refuses every round)
runs in a subprocess; this process serves the monitor and drives Chromium through Selenium
against the live page: it must update during the run without a reload, and at the end every
number it shows must equal metrics.json and the privacy ledger.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fedpriv.monitor.server import MonitorServer
from fedpriv.privacy import read_chain
from tests.e2e.test_data_refusal import wait_for_ray_exit

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 3
RUN_SCRIPT = f"""
import sys
from pathlib import Path
from fedpriv.config import load_config
from fedpriv.simulation import simulate
from tests.e2e.test_data_refusal import _app, _data

tmp = Path(sys.argv[1])
run = tmp / "run"
clean, broken, schema = _data(tmp)
cfg = load_config(None, [
    "name=monitor-e2e", "rounds={ROUNDS}", "federation.num_clients=4", "train.model=logreg",
    "train.local_epochs=1", "privacy.noise_multiplier=1.0", "data.partitioner=iid",
    f"data.dataset=csv:{{clean}}", f"data.schema={{schema}}",
])
simulate(cfg, run, client_app=_app(run, broken, schema))
"""


def _driver() -> Any:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    drv = shutil.which("chromedriver")
    if exe is None or drv is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium and chromedriver are required in CI (make install-dev)")
        pytest.skip("Chromium/chromedriver not installed (make install-dev installs them)")
    opts = Options()
    opts.binary_location = exe
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,1600",
    ):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(drv), options=opts)


def _state(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script("return Object.assign({}, document.body.dataset);"))


def _fields(driver: Any) -> dict[str, tuple[Any, str]]:
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('[data-field]'))"
        ".map(e => [e.dataset.field, e.dataset.value, e.textContent]);"
    )
    return {path: (json.loads(value), text) for path, value, text in rows}


def _request(url: str, method: str, host: str | None = None) -> int:
    req = urllib.request.Request(url, method=method, data=b"x" if method != "GET" else None)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_the_page_follows_a_live_run_and_matches_its_records(tmp_path: Path) -> None:
    run = tmp_path / "run"
    srv = MonitorServer(run)  # the folder does not exist yet: the page waits for it
    url = srv.start()
    driver = None
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    log = (tmp_path / "sim.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", RUN_SCRIPT, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        driver = _driver()
        driver.get(url)
        seen: set[tuple[str, int]] = set()
        deadline = time.monotonic() + 900
        while proc.poll() is None and time.monotonic() < deadline:
            st = _state(driver)
            if st.get("status"):
                seen.add((st["status"], int(st.get("roundsDone", "0"))))
            time.sleep(0.5)
        assert proc.wait(timeout=60) == 0, (tmp_path / "sim.log").read_text()[-3000:]
        wait_for_ray_exit()
        # Updated live, without a reload: a round was on screen while the run was still going.
        assert any(s == "running" and 0 < n < ROUNDS for s, n in seen), seen
        end = time.monotonic() + 30
        while _state(driver).get("status") != "complete" and time.monotonic() < end:
            time.sleep(0.5)
        time.sleep(1.0)  # the last snapshot (report written) has been rendered
        assert _state(driver)["status"] == "complete"
        assert driver.find_element("id", "live").get_attribute("data-state") == "live"

        shot = tmp_path / "monitor.png"
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 50_000
        if os.environ.get("FEDPRIV_MONITOR_SCREENSHOT"):
            shutil.copy(shot, os.environ["FEDPRIV_MONITOR_SCREENSHOT"])

        fields = _fields(driver)
        metrics = json.loads((run / "metrics.json").read_text())
        ledger = read_chain(run / "privacy_ledger.jsonl")
        rounds = metrics["rounds"]
        assert fields["run.rounds_done"][0] == len(rounds) == ROUNDS
        assert fields["run.rounds_total"][0] == ROUNDS
        for r in rounds:
            p = f"rounds.{r['round']}."
            for key in ("sampled", "accepted", "refused", "failed", "rejected", "seconds"):
                assert fields[p + key][0] == r[key], (p, key)
            for key in ("federated_accuracy", "heldout_accuracy", "federated_loss"):
                assert fields[p + key][0] == r[key], (p, key)
            assert fields[p + "bytes_up"][0] == r["bytes_up_total"]
            assert fields[p + "bytes_down"][0] == r["bytes_down_total"]
            assert fields[p + "heldout_accuracy"][1] == f"{100 * r['heldout_accuracy']:.1f}%"
        last_eps: dict[str, float] = {}
        refusals: dict[str, int] = {}
        for e in ledger:
            last_eps[e["client_id"]] = e["epsilon"]
            refusals[e["client_id"]] = refusals.get(e["client_id"], 0) + (e["status"] == "refused")
        assert last_eps, "empty ledger"
        for cid, eps in last_eps.items():
            value, text = fields[f"clients.{cid}.epsilon"]
            assert value == eps and text == f"{eps:.3f}", cid
            assert fields[f"clients.{cid}.refused"][0] == refusals[cid], cid
        assert (
            refusals["client-2"] == ROUNDS
            and fields["clients.client-2.last_status"][0] == "refused"
        )
        assert fields["totals.ledger_entries"][0] == len(ledger)
        assert fields["totals.refused"][0] == sum(r["refused"] for r in rounds) == ROUNDS
        assert fields["totals.accepted"][0] == sum(r["accepted"] for r in rounds)
        assert fields["totals.epsilon_max"][0] == max(last_eps.values())
        assert fields["totals.heldout_accuracy"][0] == rounds[-1]["heldout_accuracy"]
        reasons = {
            v[0] for k, v in fields.items() if k.startswith("events.") and k.endswith(".reason")
        }
        assert len(reasons) == 1 and next(iter(reasons)).startswith("data check failed: ")

        # Read-only and local: bound to 127.0.0.1, every route GET/HEAD only, no other host.
        assert srv.sock.getsockname()[0] == "127.0.0.1"
        for route in srv.app.routes:
            assert set(route.methods) <= {"GET", "HEAD"}, route.path
        for path in ("/", "/api/snapshot", "/events", "/static/monitor.js"):
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                assert _request(url.rstrip("/") + path, method) == 405, (method, path)
        assert _request(url, "GET", host="attacker.example") == 400
        with urllib.request.urlopen(url, timeout=10) as r:
            csp = r.headers["Content-Security-Policy"]
            page = r.read().decode()
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        for asset in ("monitor.js", "monitor.css"):
            with urllib.request.urlopen(f"{url}static/{asset}", timeout=10) as r:
                page += r.read().decode()
        assert "https://" not in page
        assert page.count("http://") == page.count("http://www.w3.org/2000/svg")  # a namespace
    finally:
        if driver is not None:
            driver.quit()
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
            wait_for_ray_exit()
        log.close()
        srv.stop()
