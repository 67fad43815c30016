"""The compliance privacy-budget report: build, render, show and verify.

``fedpriv report build RUN_DIR`` writes ``privacy_report.json`` (schema
``fedpriv/report/schema/privacy_report.v1.json``, signed with Ed25519) and a self-contained
``privacy_report.html``; ``fedpriv report verify RUN_DIR`` checks the signature, the hash chains,
the egress record, the file digests, and recomputes every client's epsilon with an independent
accountant. See ``docs/privacy-report.md``.

Layout: :mod:`~fedpriv.report.facts` reads a run folder once; each module of
:mod:`~fedpriv.report.sections` builds a group of sections and draws them; :mod:`~.build`
assembles and signs the JSON, :mod:`~.html` frames the page.
"""

from fedpriv.report.build import (
    SCHEMA_VERSION,
    ReportPaths,
    build_report,
    signed_payload,
    validate_report,
    write_report,
)
from fedpriv.report.facts import BuildOptions, Environment, RunFacts, load_facts
from fedpriv.report.records import REPORT_HTML, REPORT_JSON
from fedpriv.report.tiers import epsilon_tier
from fedpriv.report.verify import Check, VerifyOptions, VerifyResult, verify_run

__all__ = [
    "REPORT_HTML",
    "REPORT_JSON",
    "SCHEMA_VERSION",
    "BuildOptions",
    "Check",
    "Environment",
    "ReportPaths",
    "RunFacts",
    "VerifyOptions",
    "VerifyResult",
    "build_report",
    "epsilon_tier",
    "load_facts",
    "signed_payload",
    "validate_report",
    "verify_run",
    "write_report",
]
