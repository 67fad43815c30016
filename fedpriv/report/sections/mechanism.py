"""Sections 6-7: the privacy unit and threat model, and the DP mechanism as it actually ran."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, fmt_list, kv, pill, table, ul
from fedpriv.report.sections.base import Section

__all__ = ["SECTIONS"]


def _distributed_unit(plan: Mapping[str, Any]) -> dict[str, Any]:
    """Privacy mode ``distributed``: central DP-SGD whose noise the encrypted sum carries."""
    k, t = int(plan["k_min"]), int(plan["decrypt_threshold"])
    custody = str(plan["custody"])
    who = (
        "the server with any one client (every client holds the whole HE secret)"
        if t <= 1
        else f"the server with {t} or more clients (threshold custody, T = {t})"
    )
    return {
        "dp": True,
        "unit": "record",
        "unit_description": (
            "One training example held by one client, within the union of all clients' data"
            " (central DP-SGD over the union, one step per round). A person with several records"
            " is protected less (group privacy)."
        ),
        "adjacency": "add/remove one record (Poisson subsampling at the common rate q over the"
        " union of all clients' records)",
        "threat_model": [
            "The stated epsilon holds against the server and anyone who sees only aggregates or"
            " models (every aggregate sums at least k_min = " + str(k) + " noise shares; clients"
            " discard an aggregate with fewer and are charged for it).",
            f"Key custody: {custody}. Updates of single clients can be decrypted by {who}: such a"
            " coalition faces one share of noise per update; smaller coalitions remove only their"
            " own shares. accounting.distributed states epsilon for each coalition size.",
            "Each step is private for any model (adaptive composition); every client charges the"
            " same central event per round, persisted before its update leaves.",
            "Not covered: the plaintext metrics listed under 'releases not covered', side"
            " channels (timing, message sizes), and the device itself.",
        ],
        "covered_outputs": [
            "every encrypted aggregate (noisy sum of clipped gradients)",
            "every model the clients hold and the final model (post-processing)",
        ],
    }


def build_privacy_unit(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    if f.distributed is not None:
        return _distributed_unit(f.distributed)
    cl = f.client_level
    if cl is not None:
        both = f.record_dp
        return {
            "dp": True,
            "unit": "record+client" if both else "client",
            "unit_description": (
                "All the data of one client (client-level DP on the aggregate)"
                + ("; in addition, each record by record-level DP-SGD." if both else ".")
            ),
            "adjacency": "replace one client (the aggregate releases its number of summands)"
            + ("; add/remove one record (Poisson subsampling)" if both else ""),
            "threat_model": [
                "The client-level guarantee covers what the aggregate reveals: every global"
                f" model, provided at least k_min = {cl['k_min']} clients added their noise"
                " shares to each round's sum.",
                "It does not protect an individual update from a server that decrypts it"
                " (shared key, collusion with a client)"
                + (": record-level DP still bounds that." if both else ": nothing else does."),
                "Not covered: the plaintext metrics listed under 'releases not covered', side"
                " channels, and the device itself.",
            ],
            "covered_outputs": [
                "every global model (noised sum of clipped updates)",
                "the final model (model.safetensors)",
            ]
            + (["every encrypted model update (record-level DP)"] if both else []),
        }
    if not f.record_dp:
        return {
            "dp": False,
            "unit": "none",
            "unit_description": "Differential privacy was off: no record or client is protected"
            " by a formal guarantee.",
            "adjacency": None,
            "threat_model": [
                "Anyone who sees a model update or a global model may learn about individual"
                " training records: no noise was added."
            ],
            "covered_outputs": [],
        }
    return {
        "dp": True,
        "unit": "record",
        "unit_description": (
            "One training example held by one client. A person with several records on one"
            " device, or on several devices, is protected less (group privacy); the guarantee"
            " does not hide whether a client took part or how much data it holds."
        ),
        "adjacency": "add/remove one record (Poisson subsampling, as Opacus accounts for it)",
        "threat_model": [
            "The guarantee holds against anyone who sees any model update a client sent or any"
            " global model, including a server that decrypts updates by colluding with a client.",
            "It holds even when the server chooses the models sent to clients adversarially:"
            " each DP-SGD step is private for any input model (adaptive composition).",
            "Each client's epsilon covers all rounds it trained in: its accountant history is"
            " persisted and never reset.",
            "Not covered: the plaintext metrics listed under 'releases not covered', side"
            " channels (timing, message sizes), and the device itself.",
            "Every random draw of the mechanism (Poisson sampling masks, Gaussian noise,"
            " stochastic rounding) is made on the device from its OS CSPRNG; nothing the server"
            " sends can seed it. A device that sets a test seed itself is named in the records"
            " and the run is marked not private.",
            "A device's policy bounds what any run may ask of it (modes, delta, noise, k_min,"
            " per-run and lifetime epsilon): requests outside it are refused and recorded.",
        ],
        "covered_outputs": [
            "every encrypted model update each client sent",
            "every global model (the aggregate of DP updates: post-processing)",
            "the final model (model.safetensors)",
        ],
    }


def render_privacy_unit(r: Mapping[str, Any]) -> str:
    u = r["privacy_unit"]
    return (
        kv(
            [
                ("privacy unit", esc(u["unit"])),
                ("meaning", esc(u["unit_description"])),
                ("adjacency", esc(u["adjacency"] or "n/a")),
                ("outputs covered", esc("; ".join(u["covered_outputs"]) or "none")),
            ]
        )
        + "<p><b>Threat model</b></p>"
        + ul(u["threat_model"])
    )


def build_mechanism(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    p, t = f.privacy, f.train
    per_client = []
    for c in f.clients:
        # Without DP-SGD there is no sampling rate or noise to report, only steps.
        trained = [e for e in c.ledger if e.get("trained") and f.record_dp]
        b = int(t.get("batch_size", 1))
        batches = math.ceil(c.records / b) if c.records else None
        per_client.append(
            {
                "client_id": c.client_id,
                "records": c.records,
                "sample_rate": sorted({float(e["sample_rate"]) for e in trained}),
                "sample_rate_expected": (1.0 / batches) if batches else None,
                "noise_multiplier": sorted({float(e["noise_multiplier"]) for e in trained}),
                "steps_per_round": sorted(
                    {int(e["steps"] or 0) for e in c.ledger if e.get("trained")}
                ),
                "steps_total": sum(int(e["steps"] or 0) for e in c.ledger if e.get("trained")),
                "rounds_trained": c.rounds_trained,
                "rounds_refused": c.rounds_refused,
            }
        )
    planned = float(p.get("noise_multiplier", 0.0)) == 0.0
    if f.distributed is not None:
        return _distributed_mechanism(f, per_client, planned)
    return {
        "dp": f.record_dp,
        "algorithm": "DP-SGD (Opacus), a fresh PrivacyEngine per round" if f.record_dp else "SGD",
        "clip_norm": float(p.get("max_grad_norm", 0.0)) if f.record_dp else None,
        "sampling": "Poisson (each record joins each step independently with probability q;"
        " q = 1/ceil(n/B))"
        if f.record_dp
        else "shuffled mini-batches",
        "batch_size": int(t.get("batch_size", 0)),
        "local_epochs": int(t.get("local_epochs", 0)),
        "learning_rate": float(t.get("learning_rate", 0.0)),
        "rounds_configured": int(f.config.get("rounds", 0)),
        "rounds_run": len(f.rounds),
        "grad_sample_mode": str(p.get("grad_sample_mode", "")),
        "noise_planning": (
            f"planned per client so that every round it could train in stays within"
            f" target epsilon {float(p.get('target_epsilon', 0.0)):g}"
            if planned
            else f"fixed noise multiplier {float(p.get('noise_multiplier', 0.0)):g}"
        )
        if f.record_dp
        else None,
        "rng": {
            "cryptographically_secure": not f.test_seeded,
            "generator": "the device's OS CSPRNG (os.urandom): Poisson sampling masks, stochastic"
            " rounding and noise shares directly; Opacus' Gaussian noise from torch's MT19937"
            " generator whose whole 19,937-bit state is filled from os.urandom each round, with"
            " Opacus' secure-mode construction (four draws per coordinate) against"
            " floating-point attacks",
            "seeded_from": "os.urandom on each device, never anything from the network"
            if not f.test_seeded
            else "a FIXED test seed on " + ", ".join(f.test_seeded) + ": NOT private",
            "fixed_seed": bool(f.test_seeded),
            "note": "each client signs which source it used in every ledger record;"
            " fedpriv report verify fails a run in which any client used a test seed",
        },
        "per_client": per_client,
        "client_level": (
            "client-level DP on the aggregate: see accounting.client_level"
            if f.client_level is not None
            else None
        ),
    }


def _distributed_mechanism(
    f: RunFacts, per_client: list[dict[str, Any]], planned: bool
) -> dict[str, Any]:
    d, p, t = f.distributed or {}, f.privacy, f.train
    for c in per_client:
        c["sample_rate_expected"] = float(d["sample_rate"])
    return {
        "dp": True,
        "algorithm": (
            "distributed DP-SGD: one step per round over the union of all clients' data; each"
            " client sums its per-example clipped gradients (Opacus GradSampleModule, no Opacus"
            " noise), adds a discrete-Gaussian share of the noise in the quantized domain and"
            " encrypts; every client applies the same step from the decrypted sum divided by"
            f" the expected batch q*N = {float(d['expected_batch']):g}"
        ),
        "clip_norm": float(p.get("max_grad_norm", 0.0)),
        "sampling": (
            f"Poisson at the common rate q = B/N = {float(d['sample_rate']):.4g} over all"
            f" N = {int(d['total_records'])} records (N public, fixed in the config)"
        ),
        "batch_size": int(t.get("batch_size", 0)),
        "local_epochs": 1,  # one step per round
        "learning_rate": float(t.get("learning_rate", 0.0)),
        "rounds_configured": int(f.config.get("rounds", 0)),
        "rounds_run": len(f.rounds),
        "grad_sample_mode": "hooks (GradSampleModule)",
        "noise_planning": (
            f"sigma {float(d['noise_multiplier']):.4f} planned for the whole run"
            if planned
            else f"fixed noise multiplier {float(d['noise_multiplier']):g}"
        )
        + (
            f"; shares of std {float(d['share_std_units']):.4g} quantization units for"
            f" k_min = {int(d['k_min'])} clients; sensitivity {float(d['sensitivity_units']):.6g}"
            f" units (rounding and float32 casting included: {float(d['rounding_norm']):.3g} x C);"
            f" sigma_effective {float(d['sigma_effective']):.4f} (DDGauss, tau ="
            f" {float(d['tau']):.3g})"
        ),
        "rng": {
            "cryptographically_secure": True,
            "generator": "the OS CSPRNG (os.urandom) on each device: Poisson masks, stochastic"
            " rounding and discrete-Gaussian noise shares",
            "seeded_from": "nothing the server sends (fixed test seeds are marked in the ledger)",
            "fixed_seed": False,
            "note": "discrete Gaussian by rejection from a discrete Laplace (Canonne, Kamath and"
            " Steinke 2020) with floating-point acceptance tests",
        },
        "per_client": per_client,
        "client_level": None,
    }


def render_mechanism(r: Mapping[str, Any]) -> str:
    m = r["mechanism"]
    rng = m["rng"]
    head = kv(
        [
            ("algorithm", esc(m["algorithm"])),
            ("clip norm", esc(m["clip_norm"] if m["clip_norm"] is not None else "n/a")),
            ("sampling", esc(m["sampling"])),
            ("batch size / local epochs", f"{esc(m['batch_size'])} / {esc(m['local_epochs'])}"),
            ("learning rate", esc(m["learning_rate"])),
            (
                "rounds configured / run",
                f"{esc(m['rounds_configured'])} / {esc(m['rounds_run'])}",
            ),
            ("per-sample gradients", esc(m["grad_sample_mode"])),
            ("noise", esc(m["noise_planning"] or "none")),
            (
                "random generator",
                f"{pill(rng['cryptographically_secure'], 'secure', 'not cryptographically secure')}"
                f" {esc(rng['generator'])}; seeded from {esc(rng['seeded_from'])}."
                f" {esc(rng['note'])}",
            ),
        ]
    )
    rows = (
        [
            esc(c["client_id"]),
            esc(c["records"]),
            esc(fmt_list(c["sample_rate"], "{:.4g}")),
            esc(f"{c['sample_rate_expected']:.4g}" if c["sample_rate_expected"] else "\u2014"),
            esc(fmt_list(c["noise_multiplier"], "{:.4f}")),
            esc(fmt_list(c["steps_per_round"])),
            esc(c["steps_total"]),
            esc(fmt_list(c["rounds_trained"])),
            esc(fmt_list(c["rounds_refused"])),
        ]
        for c in m["per_client"]
    )
    return head + table(
        [
            "client",
            "records",
            "q (as run)",
            "q = 1/\u2308n/B\u2309",
            "noise \u03c3",
            "steps/round",
            "steps",
            "rounds trained",
            "refused",
        ],
        rows,
        numeric=(1, 2, 3, 4, 5, 6),
    )


SECTIONS = (
    Section(
        key="privacy_unit",
        title="Privacy unit and threat model",
        anchor="unit",
        build=build_privacy_unit,
        render=render_privacy_unit,
    ),
    Section(
        key="mechanism",
        title="Mechanism as actually run",
        anchor="mechanism",
        build=build_mechanism,
        render=render_mechanism,
    ),
)
