"""Sections 8-9: privacy accounting (record-level, PLD cross-check, client-level) and the budget."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from typing import Any

from fedpriv.privacy.accounting import DpEvent
from fedpriv.report.canonical import finite
from fedpriv.report.epsilon import history_key, pld_bounds
from fedpriv.report.facts import RunFacts, client_sort_key
from fedpriv.report.markup import eps_text, esc, kv, pill, table
from fedpriv.report.sections.base import Section
from fedpriv.report.tiers import epsilon_tier

__all__ = ["SECTIONS"]


def _client_level(f: RunFacts) -> dict[str, Any] | None:
    """Client-level DP (distributed discrete Gaussian under BFV) as planned and charged.

    Every round that ran is one Gaussian release of the sum, on a fixed-size sample of clients
    drawn without replacement; the aggregate releases the exact count, so neighbours differ by
    replacing one client's data (dp-accounting RDP, ``REPLACE_ONE``). Against the server, which
    picked the sample, there is no amplification: each client's records carry that epsilon too.
    """
    from fedpriv.privacy.client_level import replace_one_epsilon

    plan = f.client_level
    if plan is None:
        return None
    z, q = float(plan["noise_multiplier"]), float(plan["sample_rate"])
    n = int(plan.get("num_clients", 0) or 0)
    m = int(plan.get("per_round", 0) or 0)
    delta = float(plan["delta"])
    rounds = max((int(r["round"]) for r in f.rounds), default=0)
    vs_server = [
        float((r.get("client_level") or {}).get("epsilon_vs_server", 0.0))
        for r in f.client_records
        if r.get("client_level")
    ]
    from_ledger = [
        float(e["client_level_epsilon"])
        for e in f.ledger.entries
        if e.get("client_level_epsilon") is not None
    ]
    eps = replace_one_epsilon(z, n, m, rounds, delta) if n and m else math.inf
    return {
        "noise_multiplier": z,
        "sample_rate": q,
        "num_clients": n,
        "per_round": m,
        "clip_norm": float(plan["clip_norm"]),
        "k_min": int(plan["k_min"]),
        "delta": delta,
        "max_epsilon": float(plan["max_epsilon"]),
        "accountant": "rdp",
        "accountant_library": f"dp-accounting {f.environment.version('dp-accounting')}",
        "rounds_charged": rounds,
        "epsilon": finite(eps),
        "epsilon_vs_server_max": finite(max(vs_server)) if vs_server else None,
        "epsilon_ledger_max": finite(max(from_ledger)) if from_ledger else None,
        "adjacency": "replace one client (all of its data): the aggregate releases its exact"
        " number of summands",
        "sensitivity": "2 (C + sqrt(d)/s): two clipped updates differ by at most 2C, and"
        " stochastic rounding adds at most sqrt(d) quantization units per client",
        "noise": "each client adds a discrete-Gaussian share (std z*Delta/sqrt(k_min), from the"
        " OS CSPRNG) before BFV encryption; only sums of at least k_min updates are used",
        "approximations": "a sum of discrete Gaussians is close to, not exactly, a discrete"
        " Gaussian (Kairouz, Liu and Steinke 2021 bound the gap)",
        "sampling": "fixed-size sample of the clients each round, without replacement, drawn by"
        " the server from the OS CSPRNG: the amplification holds against parties who do not know"
        " the sample, not against the server (see epsilon_vs_server_max)",
    }


def _client_records(f: RunFacts) -> dict[str, Any]:
    """What the clients themselves signed: every ledger line's record and who signed it."""
    signed = sum(1 for e in f.ledger.entries if e.get("client_record"))
    return {
        "signed_lines": signed,
        "unsigned_lines": f.ledger.lines - signed,
        "registry_sha256": str(f.metrics.get("identity_registry_sha256") or "") or None,
        "rng": sorted({str(r.get("rng")) for r in f.client_records}),
        "rule": "each line carries the client's own record (round, status, DP history, epsilon,"
        " hash of its previous record) signed with its identity key; fedpriv report verify"
        " checks every signature against the registry and each client's chain against the heads"
        " the clients export (fedpriv client ledger-head)",
    }


def _distributed(f: RunFacts, per_client: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Distributed DP: the plan and epsilon against each coalition of server and clients."""
    from fedpriv.privacy.distributed import coalition_epsilons

    plan = f.distributed
    if plan is None:
        return None
    hists = [pc["history"] for pc in per_client if pc["history"]]
    longest: list[Any] = max(hists, key=lambda h: sum(int(e[2]) for e in h), default=[])
    hist = [DpEvent.from_any(e) for e in longest]
    k, t = int(plan["k_min"]), int(plan["decrypt_threshold"])
    delta = float(plan["delta"])
    acc = str(plan.get("accountant", "prv"))
    rows = [
        {
            "clients": c,
            "epsilon": finite(eps),
            "sees": "nothing but ciphertext and aggregates"
            if c == 0
            else "individual updates (one noise share each)"
            if c >= t
            else f"the aggregates, minus its {c} noise share(s)",
        }
        for c, eps in coalition_epsilons(hist, delta, k, t, accountant=acc)
    ]
    return {
        "plan": {k2: plan[k2] for k2 in sorted(plan) if not isinstance(plan[k2], (dict, list))},
        "history": [e.as_list() for e in hist],
        "coalitions": rows,
        "custody": str(plan["custody"]),
        "decrypt_threshold": t,
        "statement": (
            "Against the server and anyone who sees only aggregates: the central epsilon of the"
            " history [sigma_effective, q, steps]. A coalition of the server and c < T clients"
            " removes its c noise shares (sigma x sqrt((k_min - c)/k_min)); from T clients on it"
            " decrypts single updates, each with one share (sigma / sqrt(k_min)). PRV, or RDP"
            " where PRV gives up at tiny noise."
        ),
    }


def build_accounting(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    m, dp = f.metrics, f.record_dp
    delta = float(m.get("delta", 0.0)) if dp else None
    pld_delta = float(m.get("delta", 1e-5))
    per_client: list[dict[str, Any]] = []
    for c in f.clients:
        last = c.final
        hist_raw = (last or {}).get("history") or []
        eps = finite((last or {}).get("epsilon", 0.0)) if dp else None
        eps_pld: float | str | None = None
        eps_low: float | str | None = None
        if dp:
            hist = [DpEvent.from_any(h) for h in hist_raw]
            low, high = pld_bounds(pld_delta, history_key(hist))
            eps_pld, eps_low = finite(high), finite(low)
        per_client.append(
            {
                "client_id": c.client_id,
                "epsilon": eps,
                "epsilon_pld": eps_pld,
                "epsilon_pld_lower": eps_low,
                "history": [list(h) for h in hist_raw] if dp else [],
                "rounds_trained": c.rounds_trained,
                "ledger_seq": int(last["seq"]) if last else None,
            }
        )
    per_round = []
    for r in f.rounds:
        rnd = int(r["round"])
        per_round.append(
            {
                "round": rnd,
                "clients": [
                    {
                        "client_id": str(e["client_id"]),
                        "status": str(e["status"]),
                        "epsilon": finite(e.get("epsilon")) if dp else None,
                        "ledger_seq": int(e["seq"]),
                    }
                    for e in f.ledger.entries
                    if int(e["round"]) == rnd
                ],
            }
        )
    values = [
        math.inf if pc["epsilon"] == "inf" else float(pc["epsilon"])
        for pc in per_client
        if pc["epsilon"] is not None
    ]
    within = None
    gap = None
    if dp:
        within = all(
            pc["epsilon_pld_lower"] is None
            or pc["epsilon"] == "inf"
            or (
                pc["epsilon_pld_lower"] != "inf"
                and float(pc["epsilon"]) >= float(pc["epsilon_pld_lower"]) * (1 - 1e-9)
            )
            for pc in per_client
        )
        gaps = [
            float(pc["epsilon_pld"]) - float(pc["epsilon_pld_lower"])
            for pc in per_client
            if pc["epsilon_pld"] not in (None, "inf")
            and pc["epsilon_pld_lower"] not in (None, "inf")
        ]
        gap = max(gaps) if gaps else None
    biggest = max((c.records or 0) for c in f.clients) if f.clients else 0
    rationale = None
    if delta is not None:
        rationale = (
            f"delta = {delta:g} is the probability the epsilon bound may fail; it is below"
            f" 1/n = {1 / biggest:.3g} for the largest client (n = {biggest}), as DP practice"
            " requires (a mechanism that leaks one whole record with probability 1/n would"
            " otherwise qualify)"
            if biggest
            else f"delta = {delta:g}"
        )
    env = f.environment
    return {
        "dp": dp,
        "accountant": str(m.get("accountant", "")) if dp else None,
        "accountant_library": f"opacus {env.version('opacus')}" if dp else None,
        "delta": delta,
        "delta_rationale": rationale,
        "cross_check": {
            "accountant": "pld",
            "library": f"dp-accounting {env.version('dp-accounting')}",
            "value_discretization_interval": 1e-4,
            "discretisation_gap_max": finite(gap) if gap is not None else None,
            "all_at_or_above_lower_bound": within,
            "rule": "the PLD is discretised once rounding down (a rigorous lower bound on the true"
            " epsilon) and once rounding up (an upper bound); a reported epsilon below the lower"
            " bound fails verification, with no other tolerance",
        }
        if dp
        else None,
        "epsilon": {
            "max": finite(max(values)) if values else None,
            "median": finite(statistics.median(values)) if values else None,
            "min": finite(min(values)) if values else None,
        },
        "per_client": per_client,
        "per_round": per_round,
        "recompute": "fedpriv report verify RUN_DIR (or feed each history [sigma, q, steps] to"
        " any accountant for the Poisson-subsampled Gaussian mechanism)",
        "client_level": _client_level(f),
        "client_records": _client_records(f),
        # Only in distributed runs (the key is optional in schema 1.x).
        **({"distributed": _distributed(f, per_client)} if f.distributed is not None else {}),
    }


def _render_client_level(a: Mapping[str, Any]) -> str:
    cl = a.get("client_level")
    if not cl:
        return ""
    return "<p><b>Client-level DP</b> (the aggregate of each round)</p>" + kv(
        [
            ("adjacency", esc(cl["adjacency"])),
            ("sensitivity", esc(cl["sensitivity"])),
            (
                "mechanism",
                f"clip norm {esc(cl['clip_norm'])}, noise multiplier"
                f" z = {esc(format(cl['noise_multiplier'], '.4f'))},"
                f" {esc(cl['per_round'])} of {esc(cl['num_clients'])} clients per round, at least"
                f" k_min = {esc(cl['k_min'])} updates per sum. {esc(cl['noise'])}",
            ),
            ("sampling", esc(cl["sampling"])),
            (
                "\u03b5 after the run",
                f"{esc(eps_text(cl['epsilon']))} ({esc(cl['accountant_library'])} RDP),"
                f" \u03b4 = {esc(cl['delta'])}, over {esc(cl['rounds_charged'])} round(s);"
                f" budget {esc(cl['max_epsilon'])}; against the server (no amplification):"
                f" up to {esc(eps_text(cl['epsilon_vs_server_max']))}",
            ),
            ("approximations", esc(cl["approximations"])),
        ]
    )


def _render_distributed(a: Mapping[str, Any]) -> str:
    d = a.get("distributed")
    if not d:
        return ""
    rows = [
        [esc(x["clients"]), esc(eps_text(x["epsilon"])), esc(x["sees"])] for x in d["coalitions"]
    ]
    return (
        "<p><b>Distributed DP: epsilon against coalitions</b> (custody"
        f" {esc(d['custody'])}, decryption needs {esc(d['decrypt_threshold'])} client(s))</p>"
        + table(["server + c clients", "\u03b5", "what the coalition sees"], rows, numeric=(0, 1))
        + f"<p class='source'>{esc(d['statement'])}</p>"
    )


def render_accounting(r: Mapping[str, Any]) -> str:
    a = r["accounting"]
    if not a["dp"]:
        if a.get("client_level"):
            return "<p>Record-level DP was off.</p>" + _render_client_level(a)
        return '<p class="box bad">No accounting: differential privacy was off.</p>'
    cc = a["cross_check"]
    head = kv(
        [
            ("accountant", f"{esc(a['accountant'].upper())} ({esc(a['accountant_library'])})"),
            ("\u03b4", esc(a["delta_rationale"])),
            (
                "\u03b5 max / median / min",
                " / ".join(eps_text(a["epsilon"][k]) for k in ("max", "median", "min")),
            ),
            (
                "cross-check",
                f"{esc(cc['accountant'].upper())} ({esc(cc['library'])}), discretisation gap at"
                f" most {esc(eps_text(cc['discretisation_gap_max']))}: "
                + pill(cc["all_at_or_above_lower_bound"], "all at or above", "NOT all at or above")
                + f" <span class='source'>{esc(cc['rule'])}</span>",
            ),
            (
                "client records",
                f"{esc(a['client_records']['signed_lines'])} ledger lines signed by their clients,"
                f" {esc(a['client_records']['unsigned_lines'])} unsigned; DP randomness: "
                f"{esc(', '.join(a['client_records']['rng']) or 'n/a')}",
            ),
            ("recompute", f"<code>{esc(a['recompute'])}</code>"),
        ]
    )
    rows = []
    for c in a["per_client"]:
        tier, _ = epsilon_tier(c["epsilon"])
        hist = "; ".join(f"[{h[0]:.4f}, {h[1]:.4g}, {h[2]}]" for h in c["history"]) or "\u2014"
        tone = "yes" if tier == 1 else "t2" if tier == 2 else "no"
        rows.append(
            [
                esc(c["client_id"]),
                esc(eps_text(c["epsilon"])),
                esc(f"{eps_text(c['epsilon_pld_lower'])} .. {eps_text(c['epsilon_pld'])}"),
                f'<span class="pill {tone}">tier {esc(tier)}</span>',
                f"<code>{esc(hist)}</code>",
            ]
        )
    per_client = table(
        [
            "client",
            f"\u03b5 ({a['accountant'].upper()}, reported)",
            "\u03b5 (PLD lower .. upper bound)",
            "tier",
            "history [\u03c3, q, steps]",
        ],
        rows,
        numeric=(1, 2),
    )
    ids = [c["client_id"] for c in a["per_client"]]
    grid = []
    for rnd in a["per_round"]:
        by = {c["client_id"]: c for c in rnd["clients"]}
        cells = [esc(rnd["round"])]
        for cid in ids:
            c = by.get(cid)
            if c is None:
                cells.append("")
            else:
                mark = " \u2716" if c["status"] == "refused" else ""
                cells.append(esc(eps_text(c["epsilon"]) + mark))
        grid.append(cells)
    per_round = table(["round", *ids], grid, numeric=tuple(range(len(ids) + 1)), cls="small")
    return (
        head
        + per_client
        + "<p>Cumulative \u03b5 per client after each round (\u2716 = refused):</p>"
        + per_round
        + _render_client_level(a)
        + _render_distributed(a)
    )


def build_budget_policy(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    acct = done["accounting"]
    refusals: list[dict[str, Any]] = [
        {
            "round": int(e["round"]),
            "client_id": str(e["client_id"]),
            "epsilon_spent": finite(e.get("epsilon")),
            "reason": str(e.get("reason") or ""),
        }
        for e in f.ledger.entries
        if e.get("status") == "refused"
    ]
    cl = acct["client_level"]
    common: dict[str, Any] = {
        "refusals": refusals,
        # Only budget refusals ("refused: ... epsilon ...") mean a spent budget; a device that
        # refused a request outside its policy, an aggregate, or its own bad data is not at it.
        "clients_at_budget": sorted(
            {r["client_id"] for r in refusals if str(r["reason"]).startswith("refused:")},
            key=client_sort_key,
        ),
        "client_max_epsilon": cl["max_epsilon"] if cl else None,
        "client_on_reach": (
            "Before each round the server computes the client-level epsilon the round would"
            " reach; if it passes client_max_epsilon the run stops (clients refuse such a round"
            " too). The reason is recorded as the run's stop reason."
        )
        if cl
        else None,
        "stop_reason": str(f.metrics.get("stop_reason") or ""),
    }
    if not f.record_dp:
        return {
            "dp": cl is not None,
            "max_epsilon": None,
            "target_epsilon": None,
            "on_reach": "not applicable: record-level DP was off",
            "resets": "not applicable" if cl is None else "never: the run's rounds are counted",
            "headroom": finite(cl["max_epsilon"] - float(cl["epsilon"]))
            if cl and cl["epsilon"] != "inf"
            else None,
            **common,
        }
    p = f.privacy
    cap = float(p.get("max_epsilon", f.metrics.get("max_epsilon", 0.0)))
    return {
        "dp": True,
        "max_epsilon": cap,
        "target_epsilon": float(p.get("target_epsilon", 0.0)),
        "on_reach": (
            "Before training, a client computes the epsilon it would reach after the round; if"
            " that exceeds max_epsilon it refuses, sends nothing but the refusal, and the refusal"
            " is written to the ledger. The run goes on with the other clients."
        ),
        "resets": (
            "Never: each client's accountant history is persisted before its update leaves, so a"
            " lost update is still charged, and a restart continues from the stored history."
        ),
        "headroom": finite(cap - float(acct["epsilon"]["max"]))
        if acct["epsilon"]["max"] not in (None, "inf")
        else None,
        **common,
    }


def render_budget_policy(r: Mapping[str, Any]) -> str:
    b = r["budget_policy"]
    if not b["dp"]:
        return "<p>No privacy budget: differential privacy was off.</p>"
    pairs = []
    if b["max_epsilon"] is not None:
        pairs += [
            ("maximum \u03b5 per client", esc(format(b["max_epsilon"], "g"))),
            ("planned target \u03b5", esc(format(b["target_epsilon"], "g"))),
            ("headroom left (weakest client)", esc(eps_text(b.get("headroom")))),
            ("when the budget is reached", esc(b["on_reach"])),
            ("resets", esc(b["resets"])),
        ]
    if b.get("client_max_epsilon") is not None:
        pairs += [
            ("maximum client-level \u03b5", esc(format(b["client_max_epsilon"], "g"))),
            ("when it is reached", esc(b["client_on_reach"])),
        ]
        if b["max_epsilon"] is None:
            pairs.append(("headroom left", esc(eps_text(b.get("headroom")))))
    if b.get("stop_reason"):
        pairs.append(("the run stopped early", esc(b["stop_reason"])))
    head = kv(pairs)
    if not b["refusals"]:
        return head + "<p>No client refused a round: every client stayed within its budget.</p>"
    return head + table(
        ["round", "client", "\u03b5 already spent", "reason"],
        (
            [
                esc(x["round"]),
                esc(x["client_id"]),
                esc(eps_text(x["epsilon_spent"])),
                esc(x["reason"]),
            ]
            for x in b["refusals"]
        ),
        numeric=(0, 2),
    )


SECTIONS = (
    Section(
        key="accounting",
        title="Accounting",
        anchor="accounting",
        build=build_accounting,
        render=render_accounting,
    ),
    Section(
        key="budget_policy",
        title="Budget policy",
        anchor="budget",
        build=build_budget_policy,
        render=render_budget_policy,
    ),
)
