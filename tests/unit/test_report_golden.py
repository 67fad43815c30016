"""The report is byte-for-byte what it was: fixed run folders against their golden reports.

``tests/fixtures/report_golden`` holds five run folders (record/client/both/off DP, BFV, CKKS and
no encryption, refusals, an audit, a baseline, every builder option) and the report fedpriv built
from each, with the clock, software versions and signing key fixed (see its ``generate.py``).
Any change to what the report says, or how it is serialised and signed, shows up here as a diff.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from tests.fixtures.report_golden.generate import EXPECTED, SCENARIOS, build_scenario


def _diff(want: str, got: str, name: str) -> str:
    lines = difflib.unified_diff(
        want.splitlines(), got.splitlines(), f"expected/{name}", "built now", lineterm="", n=2
    )
    return "\n".join(list(lines)[:60])


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_report_matches_its_golden_file(name: str, tmp_path: Path) -> None:
    text, html = build_scenario(name, tmp_path)
    want = (EXPECTED / f"{name}.json").read_text(encoding="utf-8")
    assert text == want, _diff(want, text, f"{name}.json")
    want_html = (EXPECTED / f"{name}.html").read_text(encoding="utf-8")
    assert html == want_html, _diff(want_html, html, f"{name}.html")


def test_golden_reports_are_signed_by_their_test_keys() -> None:
    """The fixed key and clock make the files reproducible; the signatures are still real."""
    import json

    from fedpriv.report import signed_payload
    from fedpriv.report.signing import parse_public_key, signature_valid

    for name in SCENARIOS:
        doc = json.loads((EXPECTED / f"{name}.json").read_text(encoding="utf-8"))
        pub = parse_public_key(doc["sign_off"]["public_key_pem"])
        assert signature_valid(pub, doc["sign_off"]["signature"], signed_payload(doc)), name
