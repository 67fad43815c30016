"""Tampering with a report, its ledger or its egress record makes `fedpriv report verify` fail.

One synthetic run (real ledger writer, real accountants) is built and signed once; every test
works on a copy.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedpriv.cli.main import main
from fedpriv.privacy import HashChainWriter, read_chain
from fedpriv.report import (
    REPORT_HTML,
    REPORT_JSON,
    VerifyOptions,
    signed_payload,
    verify_run,
    write_report,
)
from fedpriv.report.canonical import file_text
from fedpriv.report.signing import fingerprint, public_key_pem, sign
from tests.unit.test_report_synthetic import make_run

# Which verification check must name the damage, per file.
NAMES = {
    REPORT_JSON: {"report file", "signature", "schema"},
    "privacy_ledger.jsonl": {"privacy ledger"},
    "egress.jsonl": {"egress record"},
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FEDPRIV_HOME", str(tmp_path_factory.mktemp("home")))
        run = make_run(tmp_path_factory.mktemp("pristine") / "run", clients=3, rounds=2)
        write_report(run)
        assert verify_run(run).ok
        yield run


@pytest.fixture
def run(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(pristine, dst)
    return dst


def _flip(data: bytes, pos: int) -> bytes:
    """Change one byte: a digit to another digit (the JSON stays valid), anything else by one bit."""
    b = data[pos]
    new = ord("0") + (b - ord("0") + 1) % 10 if chr(b).isdigit() else b ^ 0x01
    return data[:pos] + bytes([new]) + data[pos + 1 :]


def _positions(data: bytes, n: int = 10) -> list[int]:
    """First and last byte, ``n`` evenly spaced ones, the middle of a number, a space."""
    pos = {0, len(data) - 1, *(round(i * (len(data) - 1) / (n + 1)) for i in range(1, n + 1))}
    # the middle of an epsilon value (the egress record has none: a byte count instead)
    m = re.search(rb'"epsilon": ([0-9.]{6,})', data) or re.search(rb'"bytes": ([0-9]+)', data)
    assert m is not None
    pos.add(m.start(1) + len(m.group(1)) // 2)
    pos.add(data.index(b": ") + 1)  # a space JSON ignores: only byte-exact checks see it
    return sorted(pos)


def _cases() -> list[tuple[str, int]]:
    # Positions are chosen per file at run time; the index picks one of them.
    return [(name, i) for name in NAMES for i in range(14)]


@pytest.mark.parametrize(("name", "index"), _cases())
def test_any_single_byte_change_fails_and_names_what_broke(
    run: Path, name: str, index: int
) -> None:
    path = run / name
    data = path.read_bytes()
    positions = _positions(data)
    if index >= len(positions):
        pytest.skip("fewer distinct positions in this file")
    pos = positions[index]
    path.write_bytes(
        _flip(data, pos) if data[pos] != ord(" ") else data[:pos] + b"\t" + data[pos + 1 :]
    )
    result = verify_run(run)
    failed = {c.name for c in result.failures}
    assert not result.ok, f"{name} byte {pos} ({chr(data[pos])!r}) went unnoticed"
    assert failed & NAMES[name], (name, pos, failed)


def test_the_cli_exits_9_and_prints_what_broke(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", "verify", str(run)]) == 0
    out = capsys.readouterr().out
    assert "VERIFIED" in out and "[PASS] epsilon (independent PLD accountant)" in out
    ledger = run / "privacy_ledger.jsonl"
    data = ledger.read_bytes()
    m = re.search(rb'"epsilon": ([0-9.]{6,})', data)
    assert m is not None
    ledger.write_bytes(_flip(data, m.start(1) + 3))
    assert main(["report", "verify", str(run)]) == 9
    cap = capsys.readouterr()
    assert "[FAIL] privacy ledger" in cap.out and "line 1 was altered" in cap.out
    assert "verification FAILED" in cap.err and "privacy ledger" in cap.err


def _resign(run: Path, doc: dict[str, Any]) -> str:
    """What a forger does: sign the edited report with a key of their own."""
    key = Ed25519PrivateKey.generate()
    so = doc["sign_off"]
    so["public_key_pem"] = public_key_pem(key.public_key())
    so["fingerprint"] = fingerprint(key.public_key())
    so["signature"] = sign(key, signed_payload(doc))
    (run / REPORT_JSON).write_text(file_text(doc), encoding="utf-8")
    return str(so["fingerprint"])


def _lower(doc: dict[str, Any], cid: str, factor: float) -> None:
    """Lower one client's epsilon everywhere the report states it, consistently."""
    acct = doc["accounting"]
    for pc in acct["per_client"]:
        if pc["client_id"] == cid:
            pc["epsilon"] *= factor
    last = acct["per_round"][-1]
    for c in last["clients"]:
        if c["client_id"] == cid:
            c["epsilon"] *= factor
    eps = [pc["epsilon"] for pc in acct["per_client"]]
    doc["summary"]["epsilon_max"] = acct["epsilon"]["max"] = max(eps)
    doc["summary"]["epsilon_min"] = acct["epsilon"]["min"] = min(eps)


@pytest.mark.parametrize("factor", [0.9, 0.995])
def test_lowered_epsilon_fails_even_when_resigned(run: Path, factor: float) -> None:
    doc = json.loads((run / REPORT_JSON).read_text(encoding="utf-8"))
    _lower(doc, "client-2", factor)
    forged = _resign(run, doc)
    # The forger's signature is valid, and even a verifier who accepts any key rejects it.
    for opts in (
        VerifyOptions(),
        VerifyOptions(allow_unknown_key=True),
        VerifyOptions(trusted_keys=(forged,)),
    ):
        result = verify_run(run, opts)
        failed = {c.name: c for c in result.failures}
        assert not result.ok
        assert "signature" not in failed
        assert "epsilon (reporting accountant)" in failed
        assert "client-2" in " ".join(failed["epsilon (reporting accountant)"].problems)
    # The independent accountant rejects even half a percent: the only tolerance is the PLD's
    # own discretisation gap (a rigorous lower bound), about 0.001 here.
    pld = {c.name: c for c in verify_run(run).failures}["epsilon (independent PLD accountant)"]
    assert "PLD lower bound" in " ".join(pld.problems)


def test_lowered_epsilon_in_a_rechained_ledger_fails(run: Path) -> None:
    """A forger who also rewrites the ledger (and re-chains it) is caught by the recomputation."""
    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        body = {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")}
        if body["client_id"] == "client-2":
            body["epsilon"] *= 0.8
        w.append(body)
    # ... and rebuilds the report and signs it with a key of their own
    write_report(run)
    result = verify_run(run, VerifyOptions(allow_unknown_key=True))
    failed = {c.name: c for c in result.failures}
    assert "epsilon (reporting accountant)" in failed and "privacy ledger" not in failed
    assert "PRV on its history gives" in " ".join(failed["epsilon (reporting accountant)"].problems)


def test_truncated_history_in_a_rechained_ledger_fails(run: Path) -> None:
    """Shortening the stored history (fewer steps, smaller epsilon) contradicts the mechanism."""
    from fedpriv.privacy import DpEvent, opacus_epsilon

    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        body = {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")}
        if body["client_id"] == "client-1" and body["round"] == 2:
            sigma, q, steps = body["history"][-1]
            body["history"] = [[sigma, q, steps // 2]]
            body["epsilon"] = opacus_epsilon(
                [DpEvent(sigma, q, steps // 2)], body["delta"], body["accountant"]
            )
        w.append(body)
    write_report(run)
    failed = {c.name: c for c in verify_run(run, VerifyOptions(allow_unknown_key=True)).failures}
    # the client signed the whole history: the line contradicts its record, and the mechanism
    assert set(failed) == {"mechanism", "client records"}
    assert "ledger charged" in " ".join(failed["mechanism"].problems)
    assert "the client signed" in " ".join(failed["client records"].problems)


def _rechain_without(run: Path, drop: Callable[[dict[str, Any]], bool]) -> None:
    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        if not drop(e):
            w.append({k: v for k, v in e.items() if k not in ("seq", "prev", "hash")})


def test_ledger_missing_the_last_round_fails_against_the_clients_heads(
    run: Path, tmp_path: Path
) -> None:
    """Issue 10: drop the last round from the ledger, rebuild its hash chain and the report. The
    server's chain and the report are self-consistent again, but the heads the clients exported
    (their own last signed records) are no longer in the ledger."""
    from fedpriv.report.client_records import Head, write_head

    heads = []
    for e in read_chain(run / "privacy_ledger.jsonl"):  # each client's last line = its head
        rec = json.loads(e["client_record"])
        h = Head(
            e["client_id"], rec["run_id"], rec["seq"], e["client_record"], e["client_signature"]
        )
        heads = [x for x in heads if x.client_id != h.client_id] + [h]
    files = []
    for h in heads:
        write_head(h, tmp_path / f"{h.client_id}.head.json")
        files.append(tmp_path / f"{h.client_id}.head.json")
    last = max(e["round"] for e in read_chain(run / "privacy_ledger.jsonl"))
    _rechain_without(run, lambda e: e["round"] == last)
    write_report(run)
    # without the heads nothing contradicts the shortened ledger: verify says so (a warning)
    plain = {c.name: c for c in verify_run(run).checks}
    assert plain["client heads"].status == "warn" and plain["client records"].status == "pass"
    result = verify_run(run, VerifyOptions(client_heads=tuple(files)))
    failed = {c.name: c for c in result.failures}
    assert set(failed) == {"client heads"}
    assert "latest rounds are missing" in " ".join(failed["client heads"].problems)


def test_a_forged_head_is_not_accepted(run: Path, tmp_path: Path) -> None:
    from fedpriv.report.client_records import Head, write_head

    e = read_chain(run / "privacy_ledger.jsonl")[-1]
    rec = json.loads(e["client_record"])
    forged = Head(e["client_id"], rec["run_id"], rec["seq"] + 5, e["client_record"], "00" * 64)
    write_head(forged, tmp_path / "h.json")
    failed = {
        c.name: c
        for c in verify_run(run, VerifyOptions(client_heads=(tmp_path / "h.json",))).failures
    }
    assert "not a genuine signed record" in " ".join(failed["client heads"].problems)


def test_an_edited_client_record_fails_its_signature(run: Path) -> None:
    ledger = run / "privacy_ledger.jsonl"
    entries = read_chain(ledger)
    ledger.unlink()
    w = HashChainWriter(ledger)
    for e in entries:
        body = {k: v for k, v in e.items() if k not in ("seq", "prev", "hash")}
        if body["client_id"] == "client-0":
            rec = json.loads(body["client_record"])
            rec["epsilon"] *= 0.5
            body["epsilon"] = rec["epsilon"]
            body["client_record"] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        w.append(body)
    write_report(run)
    failed = {c.name: c for c in verify_run(run, VerifyOptions(allow_unknown_key=True)).failures}
    assert "bad signature" in " ".join(failed["client records"].problems)


def test_edited_html_fails(run: Path) -> None:
    html = run / REPORT_HTML
    text = html.read_text(encoding="utf-8")
    m = re.search(r'data-field="summary.epsilon_max" data-value="[^"]*">([0-9.]+)<', text)
    assert m is not None
    html.write_text(text[: m.start(1)] + "0.50" + text[m.end(1) :], encoding="utf-8")
    failed = {c.name for c in verify_run(run).failures}
    assert failed == {"HTML report"}


def test_deleted_ledger_fails(run: Path) -> None:
    (run / "privacy_ledger.jsonl").unlink()
    failed = {c.name for c in verify_run(run).failures}
    assert "privacy ledger" in failed
