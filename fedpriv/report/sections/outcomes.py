"""Sections 10-12: releases epsilon does not cover, utility, and the empirical audit."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, kv, pct, table
from fedpriv.report.sections.base import Section

__all__ = ["SECTIONS"]


def build_releases(f: RunFacts, done: Mapping[str, Any]) -> list[dict[str, Any]]:
    encrypted = f.he_on
    out = [
        {
            "release": "training metrics sent in plaintext with every update",
            "recipient": "server operator",
            "content": (
                "steps, epsilon, noise multiplier, sample rate, training loss, clipped-value"
                " count, timings (the example count n_k travels only inside the ciphertext)"
                if encrypted
                else "example count n_k (also as weight-used), steps, epsilon, noise"
                " multiplier, sample rate, training loss, clipped-value count, timings"
            ),
            "why_not_covered": (
                "computed from the private records without noise; the accounting history"
                " (sample rate 1/ceil(n_k/B), steps) reveals each client's dataset size to"
                " within one batch"
                if encrypted
                else "computed from the private records without noise; n_k reveals each"
                " client's dataset size"
            ),
        },
        {
            "release": "federated evaluation replies",
            "recipient": "server operator",
            "content": "size of each client's local test split, loss and accuracy (signed)",
            "why_not_covered": "computed on local test records without noise (every reply is in"
            " the egress record)",
        },
        {
            "release": "held-out evaluation",
            "recipient": "evaluator, and readers of metrics.json and this report",
            "content": "accuracy and loss of each round's global model on the held-out set",
            "why_not_covered": "the held-out records are not client training data and are"
            " not protected by epsilon",
        },
        {
            "release": "hyperparameter tuning and earlier runs",
            "recipient": "whoever chose the configuration",
            "content": "any runs on the same data used to pick this configuration",
            "why_not_covered": "epsilon covers this run only; tuning on the same records"
            " spends privacy that is not counted here",
        },
        {
            "release": "participation, refusals, timing and message sizes",
            "recipient": "server operator",
            "content": "which clients answered or refused each round (a refusal shows a budget"
            " is nearly spent), when, and how many bytes",
            "why_not_covered": "metadata outside the DP mechanism",
        },
    ]
    if f.fixed_noise_seed:
        out.insert(
            0,
            {
                "release": "the DP noise itself (a device's fixed test seed)",
                "recipient": "anyone who knows the test seed of " + ", ".join(f.test_seeded),
                "content": "the noise added to every update can be regenerated and subtracted",
                "why_not_covered": "a fixed seed voids the guarantee: use it for tests only",
            },
        )
    if not f.record_dp and f.client_level is not None:
        out.insert(
            0,
            {
                "release": "each individual model update",
                "recipient": "anyone who decrypts it (any client key holder; a server colluding"
                " with one client)",
                "content": "a clipped update trained on the records, carrying only this client's"
                " noise share",
                "why_not_covered": "client-level DP protects the sum of at least k_min updates,"
                " not one update alone; record-level DP was off",
            },
        )
    if not f.record_dp and f.client_level is None:
        out.insert(
            0,
            {
                "release": "every model update and global model",
                "recipient": "server operator, clients, readers of the model"
                if f.he_on
                else "server operator (plaintext), clients, readers of the model",
                "content": "models trained on the records without noise",
                "why_not_covered": "differential privacy was off: there is no epsilon",
            },
        )
    return out


def render_releases(r: Mapping[str, Any]) -> str:
    return table(
        ["release", "seen by", "content", "why \u03b5 does not cover it"],
        (
            [esc(x["release"]), esc(x["recipient"]), esc(x["content"]), esc(x["why_not_covered"])]
            for x in r["releases_not_covered"]
        ),
    )


def build_utility(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    m = f.metrics
    final = f.final_accuracy
    b = f.baseline
    base: dict[str, Any] | None = None
    if b is not None:
        base = {
            "run_folder": b.run_folder,
            "run_name": b.run_name,
            "privacy_mode": b.privacy_mode,
            "encryption": b.encryption,
            "config_hash": b.config_hash,
            "metrics_sha256": b.metrics_sha256,
            "final_accuracy": b.final_accuracy,
        }
    gap = None
    if base is not None and final is not None and base["final_accuracy"] is not None:
        gap = float(base["final_accuracy"]) - final
    return {
        "metric": "accuracy on the held-out set (decrypted and evaluated by the key holder)",
        "heldout_examples": m.get("heldout_examples"),
        "initial_accuracy": m.get("initial_heldout_accuracy"),
        "final_accuracy": final,
        "per_round": [
            {
                "round": int(r["round"]),
                "heldout_accuracy": r.get("heldout_accuracy"),
                "federated_accuracy": r.get("federated_accuracy"),
                "accepted": int(r.get("accepted", 0)),
                "refused": int(r.get("refused", 0)),
            }
            for r in f.rounds
        ],
        "baseline": base,
        "accuracy_cost": gap,
        "note": "no non-private baseline was run for this report"
        if base is None
        else "baseline: the same task trained without DP (and usually without encryption)",
    }


def render_utility(r: Mapping[str, Any]) -> str:
    u = r["utility"]
    base = u["baseline"]
    pairs = [
        ("metric", esc(u["metric"])),
        (
            "before training / final",
            f"{esc(pct(u['initial_accuracy']))} / {esc(pct(u['final_accuracy']))}",
        ),
    ]
    if base:
        pairs.append(
            (
                "non-private baseline",
                f"{esc(pct(base['final_accuracy']))} (run <code>{esc(base['run_folder'])}</code>,"
                f" DP {esc(base['privacy_mode'])}, encryption {esc(base['encryption'])});"
                f" accuracy cost of privacy {esc(pct(u['accuracy_cost']))}",
            )
        )
    else:
        pairs.append(("non-private baseline", esc(u["note"])))
    return kv(pairs) + table(
        ["round", "held-out accuracy", "federated accuracy", "accepted", "refused"],
        (
            [
                esc(x["round"]),
                esc(pct(x["heldout_accuracy"])),
                esc(pct(x["federated_accuracy"])),
                esc(x["accepted"]),
                esc(x["refused"]),
            ]
            for x in u["per_round"]
        ),
        numeric=(0, 1, 2, 3, 4),
    )


def build_audit(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    if f.audit is None:
        return {
            "performed": False,
            "note": "No empirical privacy audit (e.g. membership inference or canaries) was run"
            " for this run.",
            "result": None,
        }
    return {
        "performed": True,
        "note": "audit.json found in the run folder (its sha256 is pinned under identification)",
        "result": copy.deepcopy(dict(f.audit)),
    }


def render_audit(r: Mapping[str, Any]) -> str:
    a = r["audit"]
    out = f"<p>{esc(a['note'])}</p>"
    if a["result"] is not None:
        out += (
            f"<pre class='mono wrap'>{esc(json.dumps(a['result'], indent=2, sort_keys=True))}</pre>"
        )
    return out


SECTIONS = (
    Section(
        key="releases_not_covered",
        title="Releases not covered by epsilon",
        anchor="releases",
        build=build_releases,
        render=render_releases,
    ),
    Section(
        key="utility",
        title="Utility",
        anchor="utility",
        build=build_utility,
        render=render_utility,
    ),
    Section(
        key="audit",
        title="Empirical audit",
        anchor="audit",
        build=build_audit,
        render=render_audit,
    ),
)
