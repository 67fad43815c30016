"""The report is byte-for-byte what it was: fixed run folders against their golden reports.

``tests/fixtures/report_golden`` holds five run folders (record/client/both/off DP, BFV, CKKS and
no encryption, refusals, an audit, a baseline, every builder option) and the report fedpriv built
from each, with the clock, software versions and signing key fixed (see its ``generate.py``).
Any change to what the report says, or how it is serialised and signed, shows up here as a diff.
"""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from fedpriv.report import BuildOptions, load_facts, signed_payload
from fedpriv.report.schema import load_schema
from fedpriv.report.sections import SECTIONS
from fedpriv.report.sections.summary import build_summary
from fedpriv.report.signing import parse_public_key, signature_valid
from tests.fixtures.report_golden.generate import (
    EXPECTED,
    RUNS,
    SCENARIOS,
    build_scenario,
    golden_environment,
)


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
    for name in SCENARIOS:
        doc = json.loads((EXPECTED / f"{name}.json").read_text(encoding="utf-8"))
        pub = parse_public_key(doc["sign_off"]["public_key_pem"])
        assert signature_valid(pub, doc["sign_off"]["signature"], signed_payload(doc)), name


def test_sections_read_only_the_facts(tmp_path: Path) -> None:
    """Builders use RunFacts alone: with the run folder gone, every section comes out the same."""
    want = json.loads((EXPECTED / "both-bfv.json").read_text(encoding="utf-8"))
    for name in ("both-bfv", "off-plain"):
        shutil.copytree(RUNS / name, tmp_path / name)
    facts = load_facts(
        tmp_path / "both-bfv",
        BuildOptions(signing_key=tmp_path / "unused.pem", baseline=tmp_path / "off-plain"),
        golden_environment(),
    )
    shutil.rmtree(tmp_path / "both-bfv")
    shutil.rmtree(tmp_path / "off-plain")
    built: dict[str, Any] = {}
    for section in SECTIONS:
        if section.build is not None:
            built[section.key] = section.build(facts, built)
    built["summary"] = build_summary(facts, built)
    assert set(built) == set(want) - {"schema_version", "report_type", "sign_off"}
    for key, value in built.items():
        assert json.loads(json.dumps(value)) == want[key], key


def test_section_registry_matches_the_schema() -> None:
    """Every section the schema requires has one builder/renderer entry, in the schema's order."""
    numbered = [
        k for k in load_schema()["properties"] if k not in ("schema_version", "report_type")
    ]
    assert numbered[0] == "summary"
    assert [s.key for s in SECTIONS] == numbered[1:]
    assert len({s.anchor for s in SECTIONS}) == len(SECTIONS)
