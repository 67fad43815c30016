"""What `fedpriv simulate` prints: 80 columns, nothing cut, a progress bar in a terminal and one
plain line per round when piped."""

from __future__ import annotations

import io
import json
from pathlib import Path

from rich.console import Console

from fedpriv.cli.display import RoundDisplay, print_summary
from fedpriv.config import RunConfig
from fedpriv.runs import RunResult, write_config
from fedpriv.runs.result import round_result


def _run(tmp_path: Path, clients: int, rounds: int) -> RunResult:
    cfg = RunConfig(name="wide").replace(rounds=rounds, federation={"num_clients": clients})
    write_config(cfg, tmp_path)
    doc = {
        "wall_seconds": 12.5,
        "rounds": [
            {
                "round": r,
                "heldout_accuracy": 0.5 + r / 100,
                "federated_accuracy": 0.4 + r / 100,
                "accepted": clients,
                "sampled": clients,
                "refused": 0,
                "rejected": 0,
                "failed": 0,
                "bytes_up_total": 9000 * clients,
                "bytes_down_total": 17000 * clients,
                "seconds": 3.25,
                "clients": {
                    f"hospital-client-{i}": {
                        "status": "refused" if i == r else "accepted",
                        "epsilon": r * 0.75 + i / 10,
                        "bytes_up": 9000,
                        "bytes_down": 17000,
                    }
                    for i in range(clients)
                },
            }
            for r in range(1, rounds + 1)
        ],
    }
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    return RunResult.from_run_dir(tmp_path)


def _piped() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, width=80, force_terminal=False, highlight=False), buf


def test_summary_fits_80_columns_and_abbreviates_deliberately(tmp_path: Path) -> None:
    res = _run(tmp_path, clients=10, rounds=12)
    console, buf = _piped()
    print_summary(console, res)
    text = buf.getvalue()
    assert "…" not in text
    long = [
        x for x in text.splitlines() if len(x) > 80 and not x.startswith(("run folder", "privacy"))
    ]
    assert not long, long
    for i in range(10):
        assert f"hospital-client-{i} " in text  # client names never cut
    assert "rounds 1-" in text and "not shown" in text  # the epsilon table says what it left out
    assert "r12" in text and "9.900" in text  # the latest rounds are there
    assert "*" in text  # refusals marked


def test_progress_is_plain_lines_when_piped_and_a_bar_in_a_terminal(tmp_path: Path) -> None:
    res = _run(tmp_path, clients=3, rounds=3)
    console, buf = _piped()
    with RoundDisplay(console, res.config) as show:
        for r in res.metrics["rounds"]:
            show(round_result(r))
    lines = buf.getvalue().splitlines()
    assert [x.split()[1] for x in lines] == ["1/3", "2/3", "3/3"]
    assert "eta" in lines[0] and "eta" not in lines[-1]
    assert all(len(x) <= 80 for x in lines)

    tty = io.StringIO()
    term = Console(file=tty, width=80, force_terminal=True, highlight=False)
    with RoundDisplay(term, res.config) as show:
        assert show._progress is not None  # the rich bar with its time-remaining column
        for r in res.metrics["rounds"]:
            show(round_result(r))
    assert "round 3/3" in tty.getvalue()


def test_quiet_prints_no_rounds(tmp_path: Path) -> None:
    res = _run(tmp_path, clients=3, rounds=2)
    console, buf = _piped()
    with RoundDisplay(console, res.config, quiet=True) as show:
        for r in res.metrics["rounds"]:
            show(round_result(r))
    assert buf.getvalue() == ""
