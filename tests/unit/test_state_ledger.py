import json
import os
import stat
from pathlib import Path

import pytest

from fedpriv.errors import StateError, VerificationError
from fedpriv.privacy import ClientPrivacyState, DpEvent, HashChainWriter, read_chain, verify_chain


def test_state_round_trip_is_owner_only_and_cumulative(tmp_path: Path) -> None:
    p = tmp_path / "s" / "privacy_state.json"
    s = ClientPrivacyState.load_or_new(p, "prv", 1e-5)
    assert s.epsilon() == 0.0
    s = s.with_event(DpEvent(1.0, 0.05, 40), 1, "run-a").with_event(
        DpEvent(1.0, 0.05, 40), 2, "run-a"
    )
    s.save(p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    back = ClientPrivacyState.load_or_new(p, "prv", 1e-5)
    assert back == s and back.total_steps == 80 and back.run("run-a").rounds_trained == (1, 2)
    assert back.epsilon() > ClientPrivacyState("prv", 1e-5, (DpEvent(1.0, 0.05, 40),)).epsilon()


def test_lifetime_budget_spans_runs_and_runs_are_separate(tmp_path: Path) -> None:
    """A new run id starts its own epsilon, never the device's lifetime spend (which a server
    could otherwise reset by changing the run id)."""
    s = ClientPrivacyState("prv", 1e-5)
    s = s.with_event(DpEvent(1.0, 0.05, 40), 1, "run-a").with_event(
        DpEvent(1.0, 0.05, 40), 1, "run-b"
    )
    assert s.run_epsilon("run-a") == s.run_epsilon("run-b") > 0
    assert s.epsilon() > s.run_epsilon("run-a")
    assert s.run("run-c").history == () and s.run_epsilon("run-c") == 0.0
    # the per-run chain advances with each signed record
    s2 = s.with_record("run-a", "{}", "ab" * 32, "00")
    assert (s2.run("run-a").seq, s2.run("run-a").head) == (1, "ab" * 32)
    assert s2.run("run-b").seq == 0


def test_version_1_state_keeps_its_whole_history_as_lifetime_spend(tmp_path: Path) -> None:
    p = tmp_path / "privacy_state.json"
    p.write_text(
        '{"version": 1, "accountant": "prv", "delta": 1e-05, "history": [[1.0, 0.05, 40]],'
        ' "rounds_trained": [1]}'
    )
    s = ClientPrivacyState.load_or_new(p, "prv", 1e-5)
    assert s.total_steps == 40 and s.epsilon() > 0 and s.runs == ()


def test_edited_state_with_a_run_larger_than_lifetime_is_refused(tmp_path: Path) -> None:
    s = ClientPrivacyState("prv", 1e-5).with_event(DpEvent(1.0, 0.05, 40), 1, "r")
    doc = s.to_dict()
    doc["history"] = []  # someone reset the lifetime spend by hand
    p = tmp_path / "privacy_state.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(StateError, match="exceeds"):
        ClientPrivacyState.load_or_new(p, "prv", 1e-5)


@pytest.mark.parametrize(
    "text",
    [
        "{not json",
        "[]",
        '{"version": 1}',
        '{"version": 1, "accountant": "prv", "delta": 1e-5, "history": [[1, 2, 3]]}',
        '{"version": 2, "accountant": "prv", "delta": 1e-5, "history": []}',
        '{"version": 2, "accountant": "prv", "delta": 1e-5, "history": [], "runs": [{"run_id": 5}]}',
        '{"version": 9}',
    ],
)
def test_corrupt_state_stops_instead_of_resetting(tmp_path: Path, text: str) -> None:
    p = tmp_path / "privacy_state.json"
    p.write_text(text)
    with pytest.raises(StateError):
        ClientPrivacyState.load_or_new(p, "prv", 1e-5)


def test_state_for_other_accountant_is_refused(tmp_path: Path) -> None:
    p = tmp_path / "privacy_state.json"
    ClientPrivacyState("rdp", 1e-5, (DpEvent(1.0, 0.1, 5),)).save(p)
    with pytest.raises(StateError, match="differ"):
        ClientPrivacyState.load_or_new(p, "prv", 1e-5)


def test_hash_chain_detects_any_edit(tmp_path: Path) -> None:
    p = tmp_path / "ledger.jsonl"
    w = HashChainWriter(p)
    for i in range(5):
        w.append({"round": i, "epsilon": 0.5 * i})
    assert verify_chain(read_chain(p)) == w.head
    # a restarted writer continues the same chain
    HashChainWriter(p).append({"round": 5, "epsilon": 3.0})
    entries = read_chain(p)
    verify_chain(entries)
    lines = p.read_text().splitlines()
    edited = json.loads(lines[2])
    edited["epsilon"] = 0.0
    for tampered in (
        [*lines[:2], json.dumps(edited), *lines[3:]],  # edit
        lines[:2] + lines[3:],  # delete
        [lines[1], lines[0], *lines[2:]],  # reorder
    ):
        p.write_text("\n".join(tampered) + "\n")
        with pytest.raises(VerificationError):
            verify_chain(read_chain(p))
