"""The compliance privacy-budget report: build, render, show and verify.

``fedpriv report build RUN_DIR`` writes ``privacy_report.json`` (schema
``fedpriv/report/schema/privacy_report.v1.json``, signed with Ed25519) and a self-contained
``privacy_report.html``; ``fedpriv report verify RUN_DIR`` checks the signature, the hash chains,
the egress record, the file digests, and recomputes every client's epsilon with an independent
accountant. See ``docs/privacy-report.md``.
"""

from fedpriv.report.build import (
    PLD_TOLERANCE,
    SCHEMA_VERSION,
    BuildOptions,
    ReportPaths,
    build_report,
    epsilon_tier,
    signed_payload,
    validate_report,
    write_report,
)
from fedpriv.report.records import REPORT_HTML, REPORT_JSON
from fedpriv.report.verify import Check, VerifyOptions, VerifyResult, verify_run

__all__ = [
    "PLD_TOLERANCE",
    "REPORT_HTML",
    "REPORT_JSON",
    "SCHEMA_VERSION",
    "BuildOptions",
    "Check",
    "ReportPaths",
    "VerifyOptions",
    "VerifyResult",
    "build_report",
    "epsilon_tier",
    "signed_payload",
    "validate_report",
    "verify_run",
    "write_report",
]
