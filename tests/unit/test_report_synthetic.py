"""Privacy report on small synthetic run folders written with the real ledger writer.

``make_run`` writes what a run writes (config, metrics, hash-chained ledger and egress record,
public HE parameters) with real accountant values, in about a second, so the report's schema,
signature, verification and HTML can be tested without a federated simulation.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from fedpriv.config import config_hash, config_to_dict, load_config
from fedpriv.crypto.identity import public_openssh, sign_record
from fedpriv.privacy import DpEvent, HashChainWriter, compress_history
from fedpriv.privacy.client_level import replace_one_epsilon
from fedpriv.privacy.ledger import GENESIS, RECORD_FORMAT, make_record
from fedpriv.privacy.training import sample_rate, steps_per_round
from fedpriv.report import (
    REPORT_HTML,
    REPORT_JSON,
    VerifyOptions,
    build_report,
    epsilon_tier,
    validate_report,
    verify_run,
    write_report,
)
from fedpriv.report.epsilon import history_key, opacus_eps

SIZES = (23, 70, 101, 150)


@pytest.fixture(autouse=True)
def fedpriv_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Signing keys of these tests never land in the real ~/.fedpriv."""
    home = tmp_path_factory.mktemp("fedpriv-home")
    monkeypatch.setenv("FEDPRIV_HOME", str(home))
    return home


def make_run(
    root: Path,
    *,
    mode: str = "record",
    scheme: str = "bfv",
    clients: int = 3,
    rounds: int = 2,
    refuse: frozenset[tuple[int, str]] = frozenset(),
    ids: tuple[str, ...] = (),
    sigma: float = 1.1,
    overrides: tuple[str, ...] = (),
    eps_scale: float = 1.0,
    rng: str = "os-csprng",
) -> Path:
    """Write a run folder as the RunRecorder would, for ``clients`` clients over ``rounds``.

    ``overrides`` are extra ``--set`` items; ``eps_scale`` multiplies the epsilon each client
    records (below 1: a client that under-reports, for the PLD cross-check); ``rng`` is the DP
    randomness each client's record names (``insecure-test-seed``: a test-seeded, non-private run).
    """
    cfg = load_config(
        None,
        [
            "name=synthetic",
            f"rounds={rounds}",
            f"federation.num_clients={clients}",
            f"privacy.mode={mode}",
            f"encryption.scheme={scheme}",
            "privacy.max_epsilon=50",
            "privacy.target_epsilon=8",
            *overrides,
        ],
    )
    root.mkdir(parents=True, exist_ok=True)
    d = config_to_dict(cfg)
    (root / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True), encoding="utf-8")
    (root / "config.toml").write_text(tomli_w.dumps(d), encoding="utf-8")
    p, t = cfg.privacy, cfg.train
    dp = mode in ("record", "both")  # record-level DP-SGD histories
    params: dict[str, Any]
    if scheme == "off":
        params = {"num_values": 500, "max_clients": clients, "scheme": "off"}
    else:
        params = {
            "coeff_modulus_bits": [32],
            "format": "fedpriv.crypto.HEParams/1",
            "max_clients": clients,
            "max_weight": max(SIZES),
            "num_values": 500,
            "plain_modulus": 1032193,
            "poly_modulus_degree": 4096,
            "quant_scale": 70.0,
            "scale_bits": 0,
            "scheme": scheme,
            "value_range": 4.0,
        }
    (root / "keys" / "server").mkdir(parents=True)
    (root / "keys" / "server" / "params.json").write_text(json.dumps(params, indent=2))
    (root / "model.safetensors").write_bytes(b"not really a model, but pinned by its digest")
    header = {
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "encryption": scheme,
        "privacy_mode": mode,
        "delta": p.delta,
        "accountant": p.accountant,
        "max_epsilon": p.max_epsilon,
        "params_fingerprint": hashlib.sha256(json.dumps(params).encode()).hexdigest(),
        "num_values": 500,
        "started": "2026-01-02T03:04:05Z",
    }
    ledger = HashChainWriter(root / "privacy_ledger.jsonl")
    egress = HashChainWriter(root / "egress.jsonl")
    names = ids or tuple(f"client-{i}" for i in range(clients))
    history: dict[str, list[DpEvent]] = {c: [] for c in names}
    # Every client signs its own record of every round (what fedpriv's ClientApp does).
    keys = {c: _identity(c) for c in names}
    (root / "keys" / "server" / "identities.json").write_text(
        json.dumps({c: public_openssh(k) for c, k in keys.items()}, indent=2, sort_keys=True)
    )
    chain = {c: (0, GENESIS) for c in names}
    run_id = "synthetic-run"
    out_rounds = []
    for rnd in range(1, rounds + 1):
        entries: dict[str, Any] = {}
        for i, cid in enumerate(names):
            n = SIZES[i % len(SIZES)]
            steps = steps_per_round(n, t.batch_size, t.local_epochs)
            refused = (rnd, cid) in refuse
            if dp and not refused:
                ev = DpEvent(sigma, sample_rate(n, t.batch_size), steps)
                history[cid] = compress_history([*history[cid], ev])
            # the same Opacus accountant a client uses, memoised across synthetic runs
            eps = opacus_eps(p.accountant, p.delta, history_key(history[cid])) if dp else 0.0
            eps *= eps_scale
            trained = not refused
            cl_eps = (
                replace_one_epsilon(1.2, len(names), len(names), rnd, 1e-5)
                if mode in ("client", "both")
                else None
            )
            seq, prev = chain[cid]
            record, digest = make_record(
                RECORD_FORMAT,
                {
                    "run_id": run_id,
                    "round": rnd,
                    "client_id": cid,
                    "node_id": 1000 + i,
                    "seq": seq,
                    "prev": prev,
                    "status": "refused" if refused else "trained",
                    "reason": "refused: over budget" if refused else "",
                    "privacy_mode": mode,
                    "event": [sigma, sample_rate(n, t.batch_size), steps]
                    if dp and trained
                    else None,
                    "history": [e.as_list() for e in history[cid]],
                    "epsilon": eps,
                    "lifetime_epsilon": eps,
                    "delta": p.delta,
                    "accountant": p.accountant,
                    "rng": rng,
                    "client_level": {
                        "epsilon": cl_eps,
                        "epsilon_vs_server": replace_one_epsilon(1.2, 1, 1, rnd, 1e-5),
                        "participations": rnd,
                    }
                    if cl_eps is not None
                    else None,
                    "aggregate_count": len(names) if rnd > 1 else 0,
                    "update_sha256": "",
                    "update_bytes": 0,
                    "metrics_sha256": "",
                },
            )
            chain[cid] = (seq + 1, digest)
            ledger.append(
                {
                    "time": "2026-01-02T03:05:00Z",
                    "round": rnd,
                    "client_id": cid,
                    "node_id": 1000 + i,
                    "status": "refused" if refused else "accepted",
                    "trained": trained,
                    "noise_multiplier": sigma if dp and trained else 0.0,
                    "sample_rate": sample_rate(n, t.batch_size) if dp and trained else 0.0,
                    "steps": steps if trained else 0,
                    "delta": p.delta,
                    "accountant": p.accountant,
                    "epsilon": eps,
                    "history": [e.as_list() for e in history[cid]],
                    "reason": "refused: over budget" if refused else "",
                    "client_level_epsilon": cl_eps,
                    "rng": rng,
                    "client_record": record,
                    "client_signature": sign_record(keys[cid], digest).hex(),
                }
            )
            size = 0
            if trained:
                size = 2100 + 7 * i + rnd
                egress.append(
                    {
                        "round": rnd,
                        "client_id": cid,
                        "message": "train-reply",
                        "part": "update",
                        "kind": "model-update",
                        "bytes": size,
                        "sha256": hashlib.sha256(f"{rnd}{cid}".encode()).hexdigest(),
                        "encrypted": scheme != "off",
                        "dp_protected": mode != "off",
                        "accepted": True,
                    }
                )
            egress.append(
                {
                    "round": rnd,
                    "client_id": cid,
                    "message": "train-reply",
                    "part": "metrics",
                    "kind": "train-metrics",
                    "bytes": 300 + i,
                    "sha256": hashlib.sha256(f"m{rnd}{cid}".encode()).hexdigest(),
                    "encrypted": False,
                    "dp_protected": False,
                    "accepted": True,
                }
            )
            entries[cid] = {
                "node_id": 1000 + i,
                "status": "refused" if refused else "accepted",
                "reason": "",
                "epsilon": eps,
                "num_examples": n,
                "steps": steps if trained else 0,
                "clipped_values": 0,
                "bytes_up": size,
                "bytes_down": 0,
                "train_loss": 1.0,
                "train_seconds": 0.1,
                "encrypt_seconds": 0.01,
            }
        out_rounds.append(
            {
                "round": rnd,
                "sampled": len(names),
                "accepted": sum(c["status"] == "accepted" for c in entries.values()),
                "refused": sum(c["status"] == "refused" for c in entries.values()),
                "rejected": 0,
                "failed": 0,
                "federated_accuracy": 0.4 + 0.1 * rnd,
                "federated_loss": 1.0,
                "heldout_accuracy": 0.5 + 0.1 * rnd,
                "heldout_loss": 1.0,
                "seconds": 1.0,
                "aggregate_seconds": 0.01,
                "global_bytes": 5000,
                "bytes_up_total": sum(c["bytes_up"] for c in entries.values()),
                "bytes_down_total": 0,
                "quantization_error_bound": 0.0001 if scheme != "off" else None,
                "clients": entries,
            }
        )
    if mode in ("client", "both"):
        # What the ServerApp logs for client-level DP (fedpriv.apps.server.run_server).
        header["client_level"] = {
            "noise_multiplier": 1.2,
            "sample_rate": 1.0,
            "num_clients": len(names),
            "per_round": len(names),
            "clip_norm": 1.0,
            "k_min": len(names),
            "delta": 1e-5,
            "max_epsilon": 50.0,
        }
    metrics = {
        **header,
        "finished": "2026-01-02T03:09:05Z",
        "stop_reason": "",
        "rounds": out_rounds,
        "partition_sizes": [SIZES[i % len(SIZES)] for i in range(len(names))],
        "heldout_examples": 360,
        "initial_heldout_accuracy": 0.1,
        "wall_seconds": 4.0,
    }
    (root / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    return root


def _identity(cid: str) -> Any:
    """A fixed Ed25519 identity per client id (deterministic, so reports are reproducible)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.from_private_bytes(hashlib.sha256(cid.encode()).digest())


def _report(root: Path) -> dict[str, Any]:
    return dict(json.loads((root / REPORT_JSON).read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize(
    ("eps", "tier"),
    [(0.5, 1), (1.0, 1), (1.0001, 2), (7.99, 2), (10.0, 2), (10.01, 3), ("inf", 3), (None, None)],
)
def test_epsilon_tiers_follow_how_to_dp_fy_ml(eps: Any, tier: int | None) -> None:
    assert epsilon_tier(eps)[0] == tier


def test_dp_bfv_report_validates_signs_and_verifies(tmp_path: Path, fedpriv_home: Path) -> None:
    run = make_run(tmp_path / "run")
    paths = write_report(run)
    doc = _report(run)
    assert validate_report(doc) == []
    assert doc["schema_version"] == "1.0" and doc["summary"]["dp"] and doc["summary"]["encrypted"]
    # the private key stays out of the run folder, owner-only
    assert paths.key.parent == fedpriv_home / "signing"
    assert oct(paths.key.stat().st_mode & 0o777) == "0o600"
    assert not any(p.suffix == ".pem" for p in run.rglob("*"))
    assert "PRIVATE" not in (run / REPORT_JSON).read_text()
    # every client's reported epsilon is the ledger's, and PLD agrees within tolerance
    acct = doc["accounting"]
    assert acct["cross_check"]["all_at_or_above_lower_bound"] is True
    assert doc["summary"]["epsilon_max"] == max(c["epsilon"] for c in acct["per_client"])
    assert len(doc["egress"]["messages"]) == doc["identification"]["chains"]["egress"]["lines"]
    result = verify_run(run)
    assert result.ok, [(c.name, c.detail, c.problems) for c in result.failures]
    names = {c.name for c in result.checks if c.status == "pass"}
    assert {"signature", "signing key", "privacy ledger", "egress record", "files"} <= names
    assert {"epsilon (reporting accountant)", "epsilon (independent PLD accountant)"} <= names


def test_non_private_run_report_validates_and_says_so(tmp_path: Path) -> None:
    run = make_run(tmp_path / "plain", mode="off", scheme="off")
    write_report(run)
    doc = _report(run)
    assert validate_report(doc) == []
    s = doc["summary"]
    assert s["dp"] is False and s["encrypted"] is False and s["epsilon_max"] is None
    assert s["tier"] is None and "OFF" in s["headline"]
    assert doc["accounting"]["cross_check"] is None
    assert doc["encryption"]["security"] is None
    assert {m["encrypted"] for m in doc["egress"]["messages"]} == {False}
    assert verify_run(run).ok


def test_budget_refusal_report_lists_the_refusal(tmp_path: Path) -> None:
    run = make_run(tmp_path / "budget", rounds=3, refuse=frozenset({(3, "client-0")}))
    write_report(run)
    doc = _report(run)
    assert validate_report(doc) == []
    b = doc["budget_policy"]
    assert [(r["round"], r["client_id"]) for r in b["refusals"]] == [(3, "client-0")]
    assert b["clients_at_budget"] == ["client-0"] and doc["summary"]["refusals"] == 1
    # the refusing client's epsilon is what it had already spent: no charge, no reset
    rounds = {
        r["round"]: {c["client_id"]: c for c in r["clients"]}
        for r in doc["accounting"]["per_round"]
    }
    assert rounds[3]["client-0"]["status"] == "refused"
    assert rounds[3]["client-0"]["epsilon"] == rounds[2]["client-0"]["epsilon"]
    mech = {c["client_id"]: c for c in doc["mechanism"]["per_client"]}
    assert mech["client-0"]["rounds_refused"] == [3] and mech["client-0"]["rounds_trained"] == [
        1,
        2,
    ]
    assert verify_run(run).ok


def test_schema_rejects_a_report_missing_a_section(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    doc, _ = build_report(run)
    assert validate_report(doc) == []
    for section in ("accounting", "sign_off", "releases_not_covered", "egress"):
        broken = {k: v for k, v in doc.items() if k != section}
        assert any(section in p for p in validate_report(broken)), section
    bad = json.loads(json.dumps(doc))
    bad["accounting"]["per_client"][0]["epsilon"] = -1.0
    assert validate_report(bad)


def test_untrusted_key_is_flagged_and_pinning_it_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = make_run(tmp_path / "run")
    paths = write_report(run)
    # A verifier on another machine holds none of this user's keys.
    monkeypatch.setenv("FEDPRIV_HOME", str(tmp_path / "elsewhere"))
    result = verify_run(run)
    assert not result.ok and [c.name for c in result.failures] == ["signing key"]
    assert "NOT a key you trust" in result.failures[0].detail
    flagged = verify_run(run, VerifyOptions(allow_unknown_key=True))
    assert flagged.ok and [c.status for c in flagged.checks if c.name == "signing key"] == ["warn"]
    for pin in (paths.fingerprint, f"SHA256:{paths.fingerprint.upper()}"):
        assert verify_run(run, VerifyOptions(trusted_keys=(pin,))).ok


def test_html_escapes_untrusted_text_and_fetches_nothing(tmp_path: Path) -> None:
    evil = '<script>alert("x")</script>&'
    run = make_run(tmp_path / "run", ids=("client-0", evil))
    write_report(run)
    html = (run / REPORT_HTML).read_text(encoding="utf-8")
    assert "<script" not in html and "&lt;script&gt;" in html
    assert "default-src 'none'" in html  # CSP: the browser may fetch nothing at all
    # XML namespace names are identifiers and url(#id) points inside the page: neither fetches.
    body = re.sub(r'xmlns(:\w+)?="[^"]*"|url\(#[\w-]+\)', "", html)
    for needle in ("http:", "https:", "//", "src=", "url(", "@import"):
        assert needle not in body, needle
    assert verify_run(run).ok


def test_key_given_with_signing_key_is_used(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "org.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    run = make_run(tmp_path / "run")
    from fedpriv.report import BuildOptions
    from fedpriv.report.signing import fingerprint

    paths = write_report(run, BuildOptions(signing_key=pem, purpose="digit recognition study"))
    assert paths.fingerprint == fingerprint(key.public_key()) and paths.key == pem
    assert _report(run)["roles"]["purpose"] == "digit recognition study"
    # a key given by path is not in $FEDPRIV_HOME: verification needs it pinned
    assert not verify_run(run).ok
    assert verify_run(run, VerifyOptions(trusted_keys=(str(pem),))).ok


def test_rebuild_is_stable_and_reuses_the_run_key(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    first = write_report(run)
    second = write_report(run)
    assert first.fingerprint == second.fingerprint and first.key == second.key
    assert math.isfinite(second.seconds)
    assert os.listdir(first.key.parent) == [first.key.name]


def test_client_level_run_reports_and_verifies_its_epsilon(tmp_path: Path) -> None:
    from typing import get_args

    from fedpriv.config import PrivacyMode

    if "client" not in get_args(PrivacyMode):
        pytest.skip("this checkout has no client-level DP")
    run = make_run(tmp_path / "cl", mode="client", rounds=2)
    write_report(run)
    doc = _report(run)
    assert validate_report(doc) == []
    cl = doc["accounting"]["client_level"]
    assert cl["rounds_charged"] == 2 and cl["epsilon"] == doc["summary"]["epsilon_max"]
    assert doc["privacy_unit"]["unit"] == "client" and doc["accounting"]["dp"] is False
    assert "Client-level" in doc["summary"]["headline"]
    result = verify_run(run)
    assert result.ok, [(c.name, c.detail, c.problems) for c in result.failures]
    assert [c.status for c in result.checks if c.name == "epsilon (client-level)"] == ["pass"]
