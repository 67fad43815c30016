"""Build the signed privacy-budget report (``privacy_report.json`` + ``.html``) from a run folder.

The report is assembled only from the run's own records, read once into
:class:`~fedpriv.report.facts.RunFacts`; each of its fourteen sections (identification ...
sign-off, see ``docs/privacy-report.md``) is built by its module in
:mod:`fedpriv.report.sections`. The result is validated against the JSON Schema shipped with the
package and signed with Ed25519 over its canonical JSON.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import VerificationError
from fedpriv.fileio import atomic_write_text
from fedpriv.report.canonical import canonical_bytes, file_text
from fedpriv.report.facts import BuildOptions, Environment, load_facts
from fedpriv.report.records import REPORT_HTML, REPORT_JSON
from fedpriv.report.sections import SECTIONS
from fedpriv.report.sections.retention import draft_sign_off
from fedpriv.report.sections.summary import build_summary
from fedpriv.report.signing import load_or_create_key, sign

__all__ = [
    "REPORT_TYPE",
    "SCHEMA_VERSION",
    "ReportPaths",
    "build_report",
    "signed_payload",
    "validate_report",
    "write_report",
]

SCHEMA_VERSION = "1.0"
REPORT_TYPE = "fedpriv.privacy_report"


@dataclass(frozen=True)
class ReportPaths:
    """What :func:`write_report` wrote, with which key, and how long it took."""

    json: Path
    html: Path
    key: Path
    """Where the private signing key lives (never inside the run folder)."""
    fingerprint: str
    seconds: float


def signed_payload(doc: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the canonical report without ``sign_off.signature``."""
    body = copy.deepcopy(doc)
    body.get("sign_off", {}).pop("signature", None)
    return canonical_bytes(body)


def validate_report(doc: dict[str, Any]) -> list[str]:
    """Every JSON Schema violation of ``doc`` (empty when valid), as 'path: message' lines."""
    import jsonschema

    from fedpriv.report.schema import load_schema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


def build_report(
    run_dir: Path, opts: BuildOptions | None = None, *, env: Environment | None = None
) -> tuple[dict[str, Any], Path]:
    """Assemble and sign the report for ``run_dir``.

    Parameters
    ----------
    run_dir
        The run folder.
    opts
        What a person adds: controller, purpose, retention, a baseline run, a signing key.
    env
        The building machine's software versions and clock; default: this machine's.

    Returns
    -------
    tuple[dict, Path]
        The signed report, and where its private signing key lives.

    Raises
    ------
    VerificationError
        The ledger or egress chain is broken (a report must not vouch for altered records), or
        the assembled report does not satisfy its own schema.
    StateError
        A record the report needs is missing or unreadable.
    """
    facts = load_facts(Path(run_dir), opts, env)
    built: dict[str, Any] = {}
    for section in SECTIONS:
        if section.build is not None:
            built[section.key] = section.build(facts, built)
    key, key_path = load_or_create_key(facts.run_id, facts.options.signing_key)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "report_type": REPORT_TYPE,
        "summary": build_summary(facts, built),
        **built,
        "sign_off": draft_sign_off(facts, key.public_key()),
    }
    problems = validate_report(
        {**doc, "sign_off": {**doc["sign_off"], "signature": "A" * 86 + "=="}}
    )
    if problems:
        raise VerificationError(
            "the report does not match its schema:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    doc["sign_off"]["signature"] = sign(key, signed_payload(doc))
    return doc, key_path


def write_report(
    run_dir: Path, opts: BuildOptions | None = None, *, env: Environment | None = None
) -> ReportPaths:
    """Build, sign and write ``privacy_report.json`` and ``privacy_report.html`` into ``run_dir``.

    Both files are written or neither is replaced: the HTML is rendered before anything is written.
    """
    from fedpriv.report.html import render_html

    t0 = time.perf_counter()
    root = Path(run_dir)
    doc, key_path = build_report(root, opts, env=env)
    html = render_html(doc)
    atomic_write_text(root / REPORT_JSON, file_text(doc), mode=0o644)
    atomic_write_text(root / REPORT_HTML, html, mode=0o644)
    return ReportPaths(
        root / REPORT_JSON,
        root / REPORT_HTML,
        key_path,
        str(doc["sign_off"]["fingerprint"]),
        time.perf_counter() - t0,
    )
