"""``fedpriv report verify``: check a run's signed report against the run's own records.

Every check is independent and reports in plain words what it looked at, so one tampered byte
produces a list that names what broke rather than a single opaque error. The checks:

1. report file: valid UTF-8 JSON, byte-identical to the form it was written in;
2. schema: the shipped JSON Schema (draft 2020-12);
3. signature: Ed25519 over the canonical JSON, by the embedded public key;
4. signing key: pinned as trusted (``--trusted-key``) or held by this user;
5. privacy ledger: hash chain intact, head hash / line count / sha256 as the report states;
6. egress record: the same, and the report's "what left each device" equal to it line for line;
7. files: SHA-256 of config, metrics, HE parameters and model as the report states;
8. config hash: the resolved config hashes to what the run and the report say;
9. client records: every ledger line carries the client's own record, signed with its identity
   key (checked against the identity registry), saying what the line says; each client's records
   form an unbroken chain (a record lost in transit is listed, its charge is in the next one);
10. client heads: the chain heads the clients exported (``--client-head``, and in a simulation
    run folder each client's own state) are the last records the ledger holds for them, so a
    ledger with a client's latest rounds removed, even re-chained and re-signed, fails;
11. randomness: every client drew its DP randomness from its OS CSPRNG (a test seed: not private);
12. epsilon, reporting accountant: every ledger line's epsilon recomputed from its history with
    the Opacus accountant it names; the report's epsilons equal the ledger's;
13. epsilon, independent accountant: every client's final history recomputed with
    dp-accounting's PLD: a reported epsilon below the PLD's rigorous lower bound (an optimistic
    discretisation; the gap to the pessimistic one is the PLD's own error) fails;
14. epsilon, client-level (when on): recomputed from the run's plan (replace-one adjacency,
    sampling without replacement, dp-accounting RDP) and the rounds run;
15. mechanism: each history agrees with the configured mechanism (q = 1/ceil(n/B), steps);
16. summary: the headline numbers equal the detailed sections;
17. HTML: built from this very report (digest), its tagged numbers equal the JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal

from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.errors import CryptoError, FedprivError, VerificationError
from fedpriv.privacy.accounting import DpEvent
from fedpriv.report.build import signed_payload, validate_report
from fedpriv.report.canonical import canonical_bytes, file_text, sha256_bytes, sha256_file
from fedpriv.report.client_records import (
    Head,
    RecordCheck,
    check_client_records,
    check_heads,
    head_from_state,
    load_head,
)
from fedpriv.report.epsilon import history_key, opacus_eps, pld_bounds
from fedpriv.report.records import (
    REPORT_HTML,
    REPORT_JSON,
    TRACKED_FILES,
    ChainState,
    load_chain,
)
from fedpriv.report.signing import (
    fingerprint,
    local_trusted_fingerprints,
    parse_public_key,
    resolve_trusted,
    signature_valid,
)

__all__ = ["OPACUS_RTOL", "Check", "VerifyOptions", "VerifyResult", "verify_run"]

Status = Literal["pass", "fail", "warn", "skip"]
# The ledger's epsilon was computed by the same accountant from the same history: only float
# noise may separate them.
OPACUS_RTOL = 1e-6


@dataclass(frozen=True)
class Check:
    """One verification step and its outcome, in plain words."""

    name: str
    status: Status
    detail: str
    problems: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class VerifyOptions:
    trusted_keys: tuple[str, ...] = ()
    """Fingerprints or PEM files (``--trusted-key``)."""
    allow_unknown_key: bool = False
    """Flag, but do not fail, a valid signature by a key nobody pinned."""
    trust_local_keys: bool = True
    """Also trust keys whose private half is in this user's $FEDPRIV_HOME/signing."""
    registry: Path | None = None
    """The clients' identity registry (``identities.json``; a deployment's dealer-signed server
    bundle holds it). Default: the run folder's ``keys/server/identities.json``."""
    client_heads: tuple[Path, ...] = ()
    """Ledger heads the clients exported (``fedpriv client ledger-head``)."""


@dataclass(frozen=True)
class VerifyResult:
    run_dir: Path
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return not any(c.failed for c in self.checks)

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if c.failed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "ok": self.ok,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status,
                    "detail": c.detail,
                    "problems": list(c.problems),
                }
                for c in self.checks
            ],
        }


@dataclass
class _Ctx:
    """What the checks share; filled as far as the files allow."""

    root: Path
    opts: VerifyOptions
    doc: dict[str, Any] | None = None
    ledger: ChainState | None = None
    egress: ChainState | None = None
    metrics: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    records: RecordCheck | None = None
    registry: IdentityRegistry | None = None


def _fail(name: str, detail: str, problems: list[str] | None = None) -> Check:
    return Check(name, "fail", detail, tuple(problems or ()))


def _limit(problems: list[str], n: int = 8) -> list[str]:
    return problems if len(problems) <= n else [*problems[:n], f"... and {len(problems) - n} more"]


def _eps(v: Any) -> float | None:
    if v is None:
        return None
    return math.inf if v == "inf" else float(v)


def _close(a: float | None, b: float | None, rtol: float = OPACUS_RTOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def _hist(raw: Any) -> list[DpEvent]:
    return [DpEvent.from_any(h) for h in (raw or [])]


# --------------------------------------------------------------------------- checks


def _check_report_file(ctx: _Ctx) -> Check:
    name = "report file"
    path = ctx.root / REPORT_JSON
    if not path.exists():
        return _fail(name, f"{REPORT_JSON} is missing: build it with `fedpriv report build`.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _fail(name, f"{REPORT_JSON} is not valid UTF-8 at byte {exc.start}: it was altered.")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        return _fail(
            name,
            f"{REPORT_JSON} is not valid JSON ({exc.msg} at line {exc.lineno}): it was altered.",
        )
    if not isinstance(doc, dict):
        return _fail(name, f"{REPORT_JSON} is not a JSON object.")
    ctx.doc = doc
    try:
        expected = file_text(doc).encode("utf-8")
    except ValueError:
        return _fail(name, f"{REPORT_JSON} holds NaN or infinity, which no signed report can.")
    if raw != expected:
        at = next((i for i, (a, b) in enumerate(zip(raw, expected, strict=False)) if a != b), None)
        where = f"byte {at}" if at is not None else "its length"
        return _fail(
            name,
            f"{REPORT_JSON} parses, but its bytes differ from the form fedpriv wrote (first at"
            f" {where}): it was edited after it was written.",
        )
    return Check(
        name,
        "pass",
        f"{REPORT_JSON} is well-formed and byte-for-byte as written ({len(raw):,} bytes).",
    )


def _check_schema(ctx: _Ctx) -> Check:
    name = "schema"
    if ctx.doc is None:
        return Check(name, "skip", "no readable report to validate.")
    problems = validate_report(ctx.doc)
    if problems:
        return _fail(
            name,
            f"the report breaks its JSON Schema in {len(problems)} place(s).",
            _limit(problems),
        )
    return Check(
        name,
        "pass",
        f"the report satisfies schema version {ctx.doc.get('schema_version')} (JSON Schema draft 2020-12).",
    )


def _sign_off(ctx: _Ctx) -> dict[str, Any] | None:
    if ctx.doc is None or not isinstance(ctx.doc.get("sign_off"), dict):
        return None
    so: dict[str, Any] = ctx.doc["sign_off"]
    return so


def _check_signature(ctx: _Ctx) -> Check:
    name = "signature"
    so = _sign_off(ctx)
    if so is None:
        return (
            Check(name, "skip", "no readable sign-off section.")
            if ctx.doc is None
            else _fail(name, "the report has no sign-off section.")
        )
    try:
        pub = parse_public_key(str(so.get("public_key_pem", "")))
    except CryptoError as exc:
        return _fail(name, f"the embedded public key is unusable: {exc}.")
    fp = fingerprint(pub)
    if so.get("fingerprint") != fp:
        return _fail(
            name, f"the stated fingerprint does not belong to the embedded public key (it is {fp})."
        )
    try:
        payload = signed_payload(ctx.doc or {})
    except ValueError:
        return _fail(name, "the report cannot be put in canonical form (NaN or infinity).")
    if not signature_valid(pub, str(so.get("signature", "")), payload):
        return _fail(
            name,
            "the Ed25519 signature does not match the report's content: the report was changed"
            " after it was signed.",
        )
    return Check(
        name,
        "pass",
        f"the Ed25519 signature over the report's canonical JSON is valid for key {fp}.",
    )


def _check_key_trust(ctx: _Ctx) -> Check:
    name = "signing key"
    so = _sign_off(ctx)
    if so is None:
        return Check(name, "skip", "no sign-off section to take a key from.")
    fp = str(so.get("fingerprint", ""))
    try:
        pinned = resolve_trusted(list(ctx.opts.trusted_keys))
    except (CryptoError, OSError) as exc:
        return _fail(name, f"cannot read a --trusted-key value: {exc}.")
    if fp in pinned:
        return Check(name, "pass", f"key {fp} is one you pinned with --trusted-key.")
    if ctx.opts.trust_local_keys and fp in local_trusted_fingerprints():
        return Check(
            name,
            "pass",
            f"key {fp} was created by this user (its private key is in $FEDPRIV_HOME/signing).",
        )
    detail = (
        f"the report is signed by key {fp}, which is NOT a key you trust. A valid signature only"
        " proves the report is unchanged since that key signed it; anyone can make a new key and"
        " re-sign an edited report. Get the fingerprint from the run's owner and pass"
        " --trusted-key."
    )
    if ctx.opts.allow_unknown_key:
        return Check(name, "warn", detail + " (Not failing: --allow-unknown-key.)")
    return _fail(name, detail)


def _chain_check(ctx: _Ctx, which: Literal["ledger", "egress"]) -> Check:
    path = ctx.root / ("privacy_ledger.jsonl" if which == "ledger" else "egress.jsonl")
    label = "privacy ledger" if which == "ledger" else "egress record"
    try:
        chain = load_chain(path, ctx.root)
    except (VerificationError, FedprivError) as exc:
        return _fail(label, f"the hash chain is broken: {exc}.")
    if which == "ledger":
        ctx.ledger = chain
    else:
        ctx.egress = chain
    problems: list[str] = []
    stated: dict[str, Any] | None = None
    if ctx.doc is not None:
        try:
            stated = ctx.doc["identification"]["chains"][which]
        except (KeyError, TypeError):
            problems.append("the report does not state this record's head hash")
    if stated is not None:
        if stated.get("head_hash") != chain.head:
            problems.append(
                f"head hash {chain.head[:16]}... differs from the report's {str(stated.get('head_hash'))[:16]}..."
                " (lines were added, removed or rewritten)"
            )
        if stated.get("lines") != chain.lines:
            problems.append(f"{chain.lines} lines, the report says {stated.get('lines')}")
        if stated.get("sha256") != chain.sha256:
            problems.append("the file's SHA-256 differs from the report's (its bytes changed)")
    if which == "egress" and ctx.doc is not None:
        problems += _egress_problems(ctx.doc, chain)
    if problems:
        return _fail(label, f"{chain.file} does not match the signed report.", _limit(problems))
    tail = (
        " and matches the report line for line" if which == "egress" and ctx.doc is not None else ""
    )
    return Check(
        label,
        "pass",
        f"{chain.file}: {chain.lines} lines, every line links to the one before (SHA-256 hash"
        f" chain), head hash {chain.head[:16]}... as the report states{tail}.",
    )


def _egress_problems(doc: dict[str, Any], chain: ChainState) -> list[str]:
    try:
        msgs = doc["egress"]["messages"]
    except (KeyError, TypeError):
        return ["the report has no 'what left each device' list"]
    problems = []
    if len(msgs) != chain.lines:
        problems.append(f"the report lists {len(msgs)} messages, the egress record {chain.lines}")
    for m, e in zip(msgs, chain.entries, strict=False):
        for key in (
            "seq",
            "round",
            "client_id",
            "message",
            "part",
            "kind",
            "bytes",
            "sha256",
            "encrypted",
            "dp_protected",
            "accepted",
            "hash",
        ):
            want = e.get(
                key, True if key == "accepted" else "" if key in ("message", "part") else None
            )
            if key == "sha256":
                want = want or ""
            if m.get(key) != want:
                problems.append(
                    f"message #{e.get('seq')} ({e.get('client_id')}, round {e.get('round')}): {key} is {m.get(key)!r} in the report, {want!r} in the record"
                )
    return problems


def _check_files(ctx: _Ctx) -> Check:
    name = "files"
    if ctx.doc is None:
        return Check(name, "skip", "no readable report listing file digests.")
    try:
        listed = {str(f["path"]): f for f in ctx.doc["identification"]["files"]}
    except (KeyError, TypeError):
        return _fail(name, "the report does not list its files' digests.")
    problems = []
    for rel, f in listed.items():
        p = ctx.root / rel
        if not p.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(p) != f.get("sha256"):
            problems.append(f"{rel} changed since the report was signed (SHA-256 differs)")
    for rel in TRACKED_FILES:
        if rel not in listed and (ctx.root / rel).is_file():
            problems.append(f"{rel} exists but the report does not cover it")
    if problems:
        return _fail(name, "the run's files do not match the digests in the report.", problems)
    return Check(name, "pass", f"SHA-256 of {', '.join(listed)} as the report states.")


def _check_config_hash(ctx: _Ctx) -> Check:
    name = "config hash"
    if ctx.config is None or ctx.metrics is None:
        return Check(name, "skip", "config.json or metrics.json is unreadable.")
    blob = json.dumps(ctx.config, sort_keys=True, separators=(",", ":")).encode()
    h = sha256_bytes(blob)
    stated = [("metrics.json", ctx.metrics.get("config_hash"))]
    if ctx.doc is not None:
        stated.append(("the report", ctx.doc.get("identification", {}).get("config_hash")))
    bad = [f"{where} says {str(v)[:16]}..." for where, v in stated if v != h]
    if bad:
        return _fail(name, f"config.json hashes to {h[:16]}..., but " + "; ".join(bad) + ".")
    return Check(
        name, "pass", f"config.json hashes to the config hash the run recorded ({h[:16]}...)."
    )


def _registry(ctx: _Ctx) -> IdentityRegistry:
    if ctx.registry is None:
        path = ctx.opts.registry or ctx.root / "keys" / "server" / "identities.json"
        ctx.registry = IdentityRegistry.load(path)
    return ctx.registry


def _check_client_records(ctx: _Ctx) -> Check:
    name = "client records"
    if ctx.ledger is None:
        return Check(name, "skip", "the privacy ledger is unreadable.")
    try:
        registry = _registry(ctx)
    except CryptoError as exc:
        return _fail(
            name,
            f"no identity registry to check the clients' signatures with ({exc}); pass"
            " --registry with the federation's identities.json",
        )
    ctx.records = rc = check_client_records(ctx.ledger.entries, registry)
    if rc.problems:
        return _fail(
            name,
            "ledger lines that no client signed, or that say something else than the client did.",
            _limit(list(rc.problems)),
        )
    detail = (
        f"all {ctx.ledger.lines} ledger lines carry a record signed by the client named (identity"
        f" registry {registry.fingerprint()[:16]}...), and each of the {len(rc.chains)} clients'"
        " records link into one chain per client"
    )
    if rc.gaps:
        return Check(
            name,
            "warn",
            detail + "; some records never reached the server (listed), each charge is"
            " carried by the client's next record.",
            tuple(_limit(list(rc.gaps))),
        )
    return Check(name, "pass", detail + ".")


def _heads(ctx: _Ctx) -> list[Head]:
    heads = [load_head(p) for p in ctx.opts.client_heads]
    # A simulation run folder also holds each virtual client's own state (and with it its head).
    for state in sorted((ctx.root / "clients").glob("*/privacy_state.json")):
        heads.extend(head_from_state(state))
    return heads


def _check_client_heads(ctx: _Ctx) -> Check:
    name = "client heads"
    if ctx.records is None:
        return Check(name, "skip", "the client records could not be checked.")
    heads = _heads(ctx)
    if not heads:
        return Check(
            name,
            "warn",
            "no client exported the head of its record chain (fedpriv client ledger-head;"
            " --client-head): a ledger missing a client's latest records cannot be told apart.",
        )
    assert ctx.registry is not None
    problems = check_heads(ctx.records.chains, heads, ctx.registry)
    if problems:
        return _fail(
            name, "the ledger does not reach the heads the clients signed.", _limit(problems)
        )
    clients = sorted({h.client_id for h in heads})
    return Check(
        name,
        "pass",
        f"{len(heads)} head(s) from {len(clients)} client(s): each is a genuine signed record and"
        " the ledger holds it; no client's latest record is missing.",
    )


def _check_randomness(ctx: _Ctx) -> Check:
    name = "randomness"
    if ctx.records is None:
        return Check(name, "skip", "the client records could not be checked.")
    if ctx.records.test_seeded:
        return _fail(
            name,
            "NOT PRIVATE: these clients drew their DP randomness (sampling, noise, rounding) from a"
            " fixed test seed, so anyone who knows it can remove the noise: "
            + ", ".join(ctx.records.test_seeded),
        )
    return Check(
        name,
        "pass",
        "every client record says its DP randomness came from the device's OS CSPRNG.",
    )


def _dp_on(ctx: _Ctx) -> bool:
    """Record-level DP-SGD (the per-client ledger histories) was on."""
    if ctx.metrics is not None:
        return str(ctx.metrics.get("privacy_mode", "off")) in ("record", "both", "distributed")
    if ctx.doc is not None:
        return bool(ctx.doc.get("accounting", {}).get("dp"))
    return any(e.get("history") for e in (ctx.ledger.entries if ctx.ledger else ()))


def _final_lines(ledger: ChainState) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in ledger.entries:
        out[str(e.get("client_id"))] = e  # the chain is in time order: the last line wins
    return out


def _check_epsilon_opacus(ctx: _Ctx) -> Check:
    name = "epsilon (reporting accountant)"
    if ctx.ledger is None:
        return Check(name, "skip", "the privacy ledger is unreadable.")
    dp = _dp_on(ctx)
    problems: list[str] = []
    if not dp:
        charged = [e for e in ctx.ledger.entries if e.get("history")]
        if charged:
            return _fail(
                name, "the run says record-level DP was off but the ledger records DP histories."
            )
        if ctx.doc is not None and ctx.doc.get("accounting", {}).get("dp"):
            return _fail(
                name, "the report claims record-level DP for a run whose records say it was off."
            )
        return Check(
            name,
            "pass",
            "record-level DP was off: the ledger charges no epsilon and the report claims none.",
        )
    cache: dict[Any, float] = {}
    accountants: set[str] = set()
    deltas: set[float] = set()
    for e in ctx.ledger.entries:
        try:
            hist = _hist(e.get("history"))
            acc, delta = str(e.get("accountant")), float(e["delta"])
            key = (acc, delta, history_key(hist))
            if key not in cache:
                cache[key] = opacus_eps(acc, delta, history_key(hist))
        except (FedprivError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"ledger line {e.get('seq')}: cannot recompute ({exc})")
            continue
        accountants.add(acc)
        deltas.add(delta)
        if not _close(cache[key], _eps(e.get("epsilon"))):
            problems.append(
                f"ledger line {e.get('seq')} ({e.get('client_id')}, round {e.get('round')}): states"
                f" epsilon {e.get('epsilon')}, but {acc.upper()} on its history gives {cache[key]:.6f}"
            )
    if ctx.doc is not None:
        problems += _report_vs_ledger(ctx.doc, ctx.ledger, accountants, deltas)
    if ctx.config is not None:
        p = ctx.config.get("privacy", {})
        if accountants and accountants != {p.get("accountant")}:
            problems.append(
                f"the ledger uses accountant(s) {sorted(accountants)}, the config {p.get('accountant')!r}"
            )
        if deltas and deltas != {p.get("delta")}:
            problems.append(
                f"the ledger uses delta {sorted(deltas)}, the config {p.get('delta')!r}"
            )
    if problems:
        return _fail(
            name,
            "epsilon recomputed with the accountant named in the ledger disagrees.",
            _limit(problems),
        )
    return Check(
        name,
        "pass",
        f"all {ctx.ledger.lines} ledger lines: epsilon recomputed from the stored history with"
        f" Opacus {'/'.join(sorted(a.upper() for a in accountants))} equals the recorded value, and"
        " the report's per-client and per-round epsilons equal the ledger's.",
    )


def _report_vs_ledger(
    doc: dict[str, Any], ledger: ChainState, accountants: set[str], deltas: set[float]
) -> list[str]:
    problems: list[str] = []
    try:
        acct = doc["accounting"]
        by_seq = {int(e["seq"]): e for e in ledger.entries}
        finals = _final_lines(ledger)
        if accountants and {acct.get("accountant")} != accountants:
            problems.append(
                f"the report names accountant {acct.get('accountant')!r}, the ledger {sorted(accountants)}"
            )
        if deltas and {acct.get("delta")} != deltas:
            problems.append(
                f"the report states delta {acct.get('delta')!r}, the ledger {sorted(deltas)}"
            )
        seen = set()
        for pc in acct["per_client"]:
            cid = str(pc["client_id"])
            seen.add(cid)
            f = finals.get(cid)
            if f is None:
                problems.append(f"{cid}: in the report but not in the ledger")
                continue
            if not _close(_eps(pc["epsilon"]), _eps(f.get("epsilon")), 0.0):
                problems.append(
                    f"{cid}: the report says epsilon {pc['epsilon']}, the ledger {f.get('epsilon')}"
                )
            if pc["history"] != (f.get("history") or []):
                problems.append(f"{cid}: the report's history differs from the ledger's")
        for cid in finals:
            if cid not in seen:
                problems.append(f"{cid}: in the ledger but missing from the report")
        n_round = 0
        for rnd in acct["per_round"]:
            for c in rnd["clients"]:
                n_round += 1
                e = by_seq.get(int(c["ledger_seq"]))
                if (
                    e is None
                    or e.get("client_id") != c["client_id"]
                    or e.get("round") != rnd["round"]
                ):
                    problems.append(f"round {rnd['round']}, {c['client_id']}: no such ledger line")
                elif not _close(_eps(c["epsilon"]), _eps(e.get("epsilon")), 0.0) or c[
                    "status"
                ] != e.get("status"):
                    problems.append(
                        f"round {rnd['round']}, {c['client_id']}: the report says epsilon {c['epsilon']}"
                        f" ({c['status']}), the ledger {e.get('epsilon')} ({e.get('status')})"
                    )
        if n_round != ledger.lines:
            problems.append(
                f"the report's per-round table has {n_round} entries, the ledger {ledger.lines} lines"
            )
    except (KeyError, TypeError, ValueError) as exc:
        problems.append(f"the report's accounting section is incomplete ({exc!r})")
    return problems


def _check_epsilon_pld(ctx: _Ctx) -> Check:
    name = "epsilon (independent PLD accountant)"
    if ctx.ledger is None:
        return Check(name, "skip", "the privacy ledger is unreadable.")
    if not _dp_on(ctx):
        return Check(
            name, "skip", "record-level DP was off: there is no per-client epsilon to recompute."
        )
    reported: dict[str, Any] = {}
    source = "the ledger"
    if ctx.doc is not None:
        try:
            reported = {
                str(pc["client_id"]): pc["epsilon"] for pc in ctx.doc["accounting"]["per_client"]
            }
            source = "the report"
        except (KeyError, TypeError):
            reported = {}
    finals = _final_lines(ctx.ledger)
    problems = []
    gaps: list[float] = []
    for cid, e in finals.items():
        try:
            hist = _hist(e.get("history"))
            delta = float(e["delta"])
        except (FedprivError, KeyError, TypeError, ValueError) as exc:
            problems.append(f"{cid}: cannot recompute ({exc})")
            continue
        lower, upper = pld_bounds(delta, history_key(hist))
        rep = _eps(reported.get(cid, e.get("epsilon")))
        if rep is None:
            problems.append(f"{cid}: {source} gives no epsilon")
            continue
        if math.isinf(rep):
            continue
        # Only float rounding separates a correct report from the bound: nothing else is allowed.
        if rep < lower * (1 - 1e-9):
            problems.append(
                f"{cid}: {source} reports epsilon {rep:.4f}, below {lower:.4f}, the least any"
                f" correct accountant can give for the ledger history (PLD lower bound; upper"
                f" bound {upper:.4f})"
            )
        gaps.append(upper - lower)
    if problems:
        return _fail(
            name,
            "a reported epsilon is lower than an independent accountant proves possible.",
            _limit(problems),
        )
    return Check(
        name,
        "pass",
        f"all {len(finals)} clients: dp-accounting's PLD bounds the true epsilon of the ledger"
        " history from below and above; every reported epsilon is at or above the lower bound"
        + (f" (the PLD's own discretisation gap: at most {max(gaps):.4f})." if gaps else "."),
    )


def _check_client_level(ctx: _Ctx) -> Check:
    name = "epsilon (client-level)"
    from fedpriv.privacy.client_level import replace_one_epsilon

    mode = str((ctx.metrics or {}).get("privacy_mode", "off"))
    stated = (ctx.doc or {}).get("accounting", {}).get("client_level")
    if mode not in ("client", "both"):
        if stated:
            return _fail(name, "the report claims client-level DP for a run that did not use it.")
        return Check(name, "skip", "client-level DP was off.")
    plan = (ctx.metrics or {}).get("client_level")
    if not isinstance(plan, dict):
        return _fail(name, "the run used client-level DP but metrics.json holds no plan for it.")
    try:
        z, delta = float(plan["noise_multiplier"]), float(plan["delta"])
        n, m = int(plan["num_clients"]), int(plan["per_round"])
        rounds = max((int(r["round"]) for r in (ctx.metrics or {}).get("rounds", [])), default=0)
        eps = replace_one_epsilon(z, n, m, rounds, delta)
    except (FedprivError, KeyError, TypeError, ValueError) as exc:
        return _fail(name, f"cannot recompute the client-level epsilon ({exc}).")
    problems = []
    ledger_max = max(
        (
            float(e["client_level_epsilon"])
            for e in (ctx.ledger.entries if ctx.ledger else ())
            if e.get("client_level_epsilon") is not None
        ),
        default=0.0,
    )
    if ledger_max > eps * (1 + OPACUS_RTOL):
        problems.append(
            f"the ledger records client-level epsilon {ledger_max:.4f}, above the {eps:.4f} of {rounds} rounds"
        )
    for r in ctx.records.chains.values() if ctx.records else ():
        for rec in r.records:
            cl = rec.get("client_level") or {}
            if not cl:
                continue
            own = replace_one_epsilon(z, 1, 1, int(cl.get("participations", 0)), delta)
            if not _close(_eps(cl.get("epsilon_vs_server")), own):
                problems.append(
                    f"{r.client_id}, round {rec.get('round')}: epsilon against the server"
                    f" {cl.get('epsilon_vs_server')} differs from {own:.4f} for"
                    f" {cl.get('participations')} participation(s)"
                )
    if ctx.doc is not None:
        if not isinstance(stated, dict):
            problems.append("the report has no client-level accounting")
        else:
            rep = _eps(stated.get("epsilon"))
            if rep is None or not _close(rep, eps, 1e-6):
                problems.append(
                    f"the report says {stated.get('epsilon')}, RDP (replace-one, {m} of {n} clients"
                    f" without replacement, z = {z:.4f}, {rounds} rounds) gives {eps:.4f}"
                )
            for key, want in (
                ("noise_multiplier", z),
                ("num_clients", n),
                ("per_round", m),
                ("delta", delta),
                ("rounds_charged", rounds),
            ):
                if stated.get(key) != want:
                    problems.append(
                        f"the report's {key} is {stated.get(key)!r}, the run's {want!r}"
                    )
    if problems:
        return _fail(name, "the client-level epsilon does not hold up.", _limit(problems))
    return Check(
        name,
        "pass",
        f"client-level epsilon of {rounds} round(s), z = {z:.4f}, {m} of {n} clients per round"
        f" (replace-one, without replacement): dp-accounting RDP gives {eps:.4f}; the report,"
        " the ledger and each client's epsilon against the server agree.",
    )


def _check_mechanism(ctx: _Ctx) -> Check:
    name = "mechanism"
    if ctx.ledger is None or ctx.metrics is None or ctx.config is None:
        return Check(name, "skip", "the ledger, metrics.json or config.json is unreadable.")
    if not _dp_on(ctx):
        return Check(name, "skip", "record-level DP was off: no DP-SGD mechanism to check.")
    t = ctx.config.get("train", {})
    b, epochs = int(t.get("batch_size", 0)), int(t.get("local_epochs", 0))
    counts: dict[tuple[int, str], Any] = {}
    for r in ctx.metrics.get("rounds", []):
        for cid, c in (r.get("clients") or {}).items():
            counts[(int(r["round"]), str(cid))] = c.get("num_examples")
    problems = []
    charged: dict[str, int] = {}
    unrecorded: dict[str, int] = {}
    for e in ctx.ledger.entries:
        cid, rnd = str(e.get("client_id")), int(e.get("round", 0))
        try:
            hist = _hist(e.get("history"))
        except FedprivError as exc:
            problems.append(f"ledger line {e.get('seq')}: {exc}")
            continue
        if e.get("trained"):
            charged[cid] = charged.get(cid, 0) + int(e.get("steps") or 0)
            n = counts.get((rnd, cid))
            if n and b:
                batches = math.ceil(int(n) / b)
                if not math.isclose(float(e.get("sample_rate") or 0), 1 / batches, rel_tol=1e-12):
                    problems.append(
                        f"{cid} round {rnd}: q = {e.get('sample_rate')}, but 1/ceil({n}/{b}) = {1 / batches:.6g}"
                    )
                if int(e.get("steps") or 0) != epochs * batches:
                    problems.append(
                        f"{cid} round {rnd}: {e.get('steps')} steps, expected {epochs} x {batches}"
                    )
            if hist and (
                hist[-1].noise_multiplier != e.get("noise_multiplier")
                or hist[-1].sample_rate != e.get("sample_rate")
            ):
                problems.append(
                    f"{cid} round {rnd}: the history's last (sigma, q) is not the round's"
                )
        total = sum(h.steps for h in hist)
        if total < charged.get(cid, 0):
            problems.append(
                f"{cid} round {rnd}: the history holds {total} steps, the ledger charged {charged.get(cid, 0)}"
                " (steps missing from the history?)"
            )
        elif total > charged.get(cid, 0):
            # Trained and charged, but never recorded by the server (an interrupted round
            # that was run again after a resume, a lost update): the epsilon counts it.
            unrecorded[cid] = total - charged.get(cid, 0)
    if problems:
        return _fail(
            name,
            "the stored histories disagree with the mechanism as configured and run.",
            _limit(problems),
        )
    if unrecorded:
        return Check(
            name,
            "warn",
            "every history holds every step the ledger charged, with the expected q and steps;"
            " some clients also spent budget on training the server never recorded (an"
            " interrupted round run again after a resume, or a lost update). Their epsilon"
            " includes it: conservative, never under-reported.",
            tuple(f"{cid}: {n} steps beyond the ledger" for cid, n in sorted(unrecorded.items())),
        )
    return Check(
        name,
        "pass",
        "every history matches the run: Poisson rate q = 1/ceil(n/B) and local_epochs x ceil(n/B)"
        " steps per trained round, and each history holds every step the ledger charged.",
    )


def _check_summary(ctx: _Ctx) -> Check:
    name = "summary numbers"
    if ctx.doc is None:
        return Check(name, "skip", "no readable report.")
    try:
        s, acct, eg = ctx.doc["summary"], ctx.doc["accounting"], ctx.doc["egress"]
        vals = [
            (str(pc["client_id"]), _eps(pc["epsilon"]))
            for pc in acct["per_client"]
            if pc["epsilon"] is not None
        ]
        problems = []
        if vals:
            hi = max(v for _, v in vals if v is not None)
            lo = min(v for _, v in vals if v is not None)
            for key, want in (("epsilon_max", hi), ("epsilon_min", lo)):
                if not _close(_eps(s[key]), want, 0.0):
                    problems.append(f"summary {key} is {s[key]}, the per-client table gives {want}")
            if not _close(_eps(acct["epsilon"]["max"]), hi, 0.0):
                problems.append("accounting epsilon max differs from the per-client table")
            tier = 1 if hi <= 1 else 2 if hi <= 10 else 3
            if s["tier"] != tier:
                problems.append(f"summary tier is {s['tier']}, epsilon {hi} is tier {tier}")
        elif acct.get("client_level"):
            cl = _eps(acct["client_level"]["epsilon"])
            for key in ("epsilon_max", "epsilon_min", "client_level_epsilon"):
                if not _close(_eps(s[key]), cl, 0.0):
                    problems.append(f"summary {key} is {s[key]}, the client-level epsilon {cl}")
            if cl is not None:
                tier = 1 if cl <= 1 else 2 if cl <= 10 else 3
                if s["tier"] != tier:
                    problems.append(f"summary tier is {s['tier']}, epsilon {cl} is tier {tier}")
        elif s.get("epsilon_max") is not None:
            problems.append("summary states an epsilon, but no client has one")
        totals = eg["totals"]
        msgs = eg["messages"]
        for key, want in (
            ("bytes_encrypted", sum(m["bytes"] for m in msgs if m["encrypted"])),
            ("bytes_not_encrypted", sum(m["bytes"] for m in msgs if not m["encrypted"])),
            ("messages", len(msgs)),
        ):
            if s[key] != want or totals[key] != want:
                problems.append(f"summary {key} is {s[key]}, the messages add up to {want}")
        if ctx.ledger is not None:
            refused = sum(e.get("status") == "refused" for e in ctx.ledger.entries)
            if s["refusals"] != refused:
                problems.append(f"summary says {s['refusals']} refusals, the ledger has {refused}")
        if ctx.metrics is not None:
            if s["dp"] != (str(ctx.metrics.get("privacy_mode", "off")) != "off"):
                problems.append("summary's DP on/off differs from the run's")
            if s["encrypted"] != (str(ctx.metrics.get("encryption")) != "off"):
                problems.append("summary's encryption on/off differs from the run's")
    except (KeyError, TypeError, ValueError) as exc:
        return _fail(name, f"the summary is incomplete ({exc!r}).")
    if problems:
        return _fail(name, "the summary's numbers disagree with the detailed sections.", problems)
    return Check(
        name,
        "pass",
        "the summary's epsilon, tier, byte and message counts equal the detailed sections and the ledger.",
    )


class _Fields(HTMLParser):
    """Collects the HTML's digest meta tag and every data-field/data-value pair."""

    def __init__(self) -> None:
        super().__init__()
        self.digest: str | None = None
        self.fields: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "meta" and a.get("name") == "fedpriv-report-digest":
            self.digest = a.get("content")
        if "data-field" in a:
            self.fields.append((str(a["data-field"]), str(a.get("data-value"))))


def _check_html(ctx: _Ctx) -> Check:
    name = "HTML report"
    path = ctx.root / REPORT_HTML
    if ctx.doc is None:
        return Check(name, "skip", "no readable report to compare the HTML with.")
    if not path.exists():
        return _fail(name, f"{REPORT_HTML} is missing.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return _fail(name, f"{REPORT_HTML} is not valid UTF-8: it was altered.")
    from fedpriv.report.html import render_html, report_digest
    from fedpriv.report.markup import lookup

    parser = _Fields()
    parser.feed(text)
    problems = []
    try:
        digest = report_digest(ctx.doc)
    except ValueError:
        digest = ""
    if parser.digest != digest:
        problems.append("it was built from a different report (digest differs)")
    for path_, value in parser.fields:
        try:
            want = json.loads(canonical_bytes(lookup(ctx.doc, path_)))
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"it shows {path_}, which the report does not have")
            continue
        try:
            got = json.loads(value)
        except json.JSONDecodeError:
            problems.append(f"{path_}: unreadable value {value!r}")
            continue
        if got != want:
            problems.append(f"it shows {path_} = {got!r}, the report says {want!r}")
    if not parser.fields:
        problems.append("it carries none of the report's tagged numbers")
    exact = ""
    if not problems:
        import matplotlib

        built_with = ctx.doc.get("identification", {}).get("software", {}).get("matplotlib")
        if built_with == matplotlib.__version__:
            try:
                same = render_html(ctx.doc) == text
            except (KeyError, TypeError, ValueError) as exc:
                return _fail(name, f"cannot re-render the report ({exc!r}).")
            if not same:
                problems.append("its bytes differ from what the signed report renders to (edited?)")
            exact = "; re-rendering the signed report gives the same bytes"
        else:
            exact = f"; not re-rendered (built with matplotlib {built_with}, this is {matplotlib.__version__})"
    if problems:
        return _fail(name, f"{REPORT_HTML} does not match the signed report.", _limit(problems))
    return Check(
        name,
        "pass",
        f"{REPORT_HTML} was built from this report and its {len(parser.fields)} tagged numbers equal the JSON{exact}.",
    )


def _check_ledger(ctx: _Ctx) -> Check:
    return _chain_check(ctx, "ledger")


def _check_egress(ctx: _Ctx) -> Check:
    return _chain_check(ctx, "egress")


def _load_run_json(ctx: _Ctx) -> None:
    """metrics.json and config.json feed several checks; unreadable ones are caught by 'files'."""
    for rel, attr in (("metrics.json", "metrics"), ("config.json", "config")):
        try:
            doc = json.loads((ctx.root / rel).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(doc, dict):
            setattr(ctx, attr, doc)


_CHECKS: tuple[Callable[[_Ctx], Check], ...] = (
    _check_report_file,
    _check_schema,
    _check_signature,
    _check_key_trust,
    _check_ledger,
    _check_egress,
    _check_files,
    _check_config_hash,
    _check_client_records,
    _check_client_heads,
    _check_randomness,
    _check_epsilon_opacus,
    _check_epsilon_pld,
    _check_client_level,
    _check_mechanism,
    _check_summary,
    _check_html,
)


def verify_run(run_dir: Path, opts: VerifyOptions | None = None) -> VerifyResult:
    """Run every check on ``run_dir``. Never raises for a failed check: inspect the result."""
    root = Path(run_dir)
    if not root.is_dir():
        raise VerificationError(f"{root}: not a folder")
    ctx = _Ctx(root, opts or VerifyOptions())
    _load_run_json(ctx)
    checks = []
    for check in _CHECKS:
        try:
            checks.append(check(ctx))
        except Exception as exc:
            # Input is untrusted: a check that trips over it fails closed and says so.
            label = check.__name__.removeprefix("_check_").replace("_", " ")
            checks.append(_fail(label, f"could not complete: {exc!r}"))
    return VerifyResult(root, tuple(checks))
