"""``fedpriv report build|show|verify``: the compliance privacy-budget report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError, VerificationError

__all__ = ["add_report_parser"]

_MARK = {"pass": "PASS", "fail": "FAIL", "warn": "FLAG", "skip": "SKIP"}


def cmd_report_build(args: argparse.Namespace) -> int:
    from fedpriv.report import BuildOptions, write_report

    paths = write_report(
        args.run_dir,
        BuildOptions(
            signing_key=args.signing_key,
            baseline=args.baseline,
            controller=args.controller,
            purpose=args.purpose,
            retention=args.retention,
        ),
    )
    print(f"wrote {paths.json} ({paths.json.stat().st_size:,} bytes)")
    print(f"wrote {paths.html} ({paths.html.stat().st_size:,} bytes)")
    print(f"signed with Ed25519 key {paths.fingerprint}")
    print(f"  private key: {paths.key} (kept out of the run folder; do not share it)")
    print(
        f"  give readers the fingerprint to pin: fedpriv report verify {args.run_dir} --trusted-key {paths.fingerprint}"
    )
    print(f"built in {paths.seconds:.1f}s")
    return 0


def _load(run_dir: Path) -> dict[str, Any]:
    from fedpriv.report import REPORT_JSON

    path = run_dir / REPORT_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StateError(f"{path} is missing: run `fedpriv report build {run_dir}` first") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(
            f"{path}: unreadable report ({exc}); run `fedpriv report verify`"
        ) from None
    if not isinstance(doc, dict):
        raise VerificationError(f"{path}: not a report object")
    return doc


def cmd_report_show(args: argparse.Namespace) -> int:
    from fedpriv.report.show import print_summary

    print_summary(_load(args.run_dir), args.run_dir)
    return 0


def cmd_report_verify(args: argparse.Namespace) -> int:
    from fedpriv.report import VerifyOptions, verify_run

    result = verify_run(
        args.run_dir,
        VerifyOptions(
            trusted_keys=tuple(args.trusted_key),
            allow_unknown_key=args.allow_unknown_key,
            trust_local_keys=not args.no_local_trust,
            registry=args.registry,
            client_heads=tuple(args.client_head),
        ),
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"Verifying the privacy report of {args.run_dir}")
        for c in result.checks:
            print(f"  [{_MARK[c.status]}] {c.name}: {c.detail}")
            for p in c.problems:
                print(f"         - {p}")
        flagged = [c.name for c in result.checks if c.status == "warn"]
        if result.ok:
            extra = f" (flagged: {', '.join(flagged)})" if flagged else ""
            print(f"VERIFIED: every check passed{extra}.")
    if not result.ok:
        names = ", ".join(c.name for c in result.failures)
        raise VerificationError(
            f"verification FAILED: {len(result.failures)} check(s) failed: {names}"
        )
    return 0


def add_report_parser(sub: Any) -> None:
    """Register ``fedpriv report`` on the top-level subparsers."""
    r = sub.add_parser("report", help="the privacy-budget report: build, show, verify")
    rs = r.add_subparsers(dest="report_command", required=True)
    b = rs.add_parser(
        "build", help="(re)build and sign privacy_report.json and .html from a run folder"
    )
    b.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    b.add_argument(
        "--baseline",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="a non-private run to compare accuracy with",
    )
    b.add_argument(
        "--signing-key",
        type=Path,
        default=None,
        metavar="PEM",
        help="Ed25519 private key (default: a per-run key under $FEDPRIV_HOME/signing)",
    )
    b.add_argument("--controller", default="", help="who is the controller (recorded under roles)")
    b.add_argument(
        "--purpose", default="", help="the purpose of the training (recorded under roles)"
    )
    b.add_argument(
        "--retention", default="", help="the retention policy (recorded under retention)"
    )
    b.set_defaults(func=cmd_report_build)
    s = rs.add_parser("show", help="print the report's summary in the terminal")
    s.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    s.set_defaults(func=cmd_report_show)
    v = rs.add_parser(
        "verify", help="check the signature, hash chains, egress record and every epsilon"
    )
    v.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    v.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        metavar="FINGERPRINT|PEM",
        help="a signing key you trust: its SHA-256 fingerprint or a PEM file (repeatable)",
    )
    v.add_argument(
        "--allow-unknown-key",
        action="store_true",
        help="flag, but do not fail on, a valid signature by a key you have not pinned",
    )
    v.add_argument(
        "--no-local-trust",
        action="store_true",
        help="do not trust the keys in $FEDPRIV_HOME/signing (check as a third party would)",
    )
    v.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="the clients' identity registry (identities.json); default: the run folder's"
        " keys/server/identities.json",
    )
    v.add_argument(
        "--client-head",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a ledger head a client exported (fedpriv client ledger-head; repeatable): the"
        " ledger must reach it",
    )
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    v.set_defaults(func=cmd_report_verify)
