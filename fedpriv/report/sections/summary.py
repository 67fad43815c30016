"""The summary: the headline numbers and plain words shown first, drawn from the other sections.

Built after every numbered section (it restates them; ``verify`` checks that it does so
faithfully) and rendered first on the page, as cards and the epsilon tiers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import TIER_CLASS, eps_text, esc, num, pct, size_text, ul
from fedpriv.report.tiers import TIER_SOURCE, TIERS, epsilon_tier

__all__ = ["build_summary", "render_summary"]


def _eps_words(eps: float | str | None) -> str:
    if eps is None:
        return "n/a"
    return "infinite" if eps == "inf" else f"{float(eps):.2f}"


def build_summary(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    """The summary of the sections in ``done`` (all of them but the sign-off)."""
    acct, egress = done["accounting"], done["egress"]
    final = f.final_accuracy
    cap = f.privacy.get("max_epsilon") if f.record_dp else None
    rows = [pc for pc in acct["per_client"] if pc["epsilon"] is not None]

    def eps_value(pc: Mapping[str, Any]) -> float:
        return math.inf if pc["epsilon"] == "inf" else float(pc["epsilon"])

    weak = max(rows, key=eps_value) if rows else None
    strong = min(rows, key=eps_value) if rows else None
    tier, label = epsilon_tier(weak["epsilon"] if weak else None)
    s_tier, s_label = epsilon_tier(strong["epsilon"] if strong else None)
    enc_words = (
        f"Every model update left its device encrypted ({f.scheme.upper()}); the server added"
        " ciphertexts without ever holding a decryption key."
        if f.he_on
        else "Encryption was OFF: the server saw every model update in plaintext."
    )
    cl = acct["client_level"]
    delta = acct["delta"]
    if f.record_dp and weak is not None and strong is not None:
        headline = (
            f"Record-level differential privacy protected every client's training records. The"
            f" weakest guarantee is \u03b5 = {_eps_words(weak['epsilon'])} at \u03b4 = {delta:g}"
            f" ({weak['client_id']}): tier {tier}, {label}."
        )
        if cl:
            headline += (
                f" Client-level DP also bounded each client's whole contribution: \u03b5 ="
                f" {_eps_words(cl['epsilon'])} at \u03b4 = {cl['delta']:g}."
            )
        weakest = (
            f"Weakest: {weak['client_id']} spent \u03b5 = {_eps_words(weak['epsilon'])} (tier"
            f" {tier}, {label})."
        )
        strongest = (
            f"Strongest: {strong['client_id']} spent \u03b5 = {_eps_words(strong['epsilon'])}"
            f" (tier {s_tier}, {s_label})."
        )
    elif cl:
        weak = strong = None
        tier, label = epsilon_tier(cl["epsilon"])
        delta, cap = cl["delta"], cl["max_epsilon"]
        headline = (
            f"Client-level differential privacy protected each client's whole contribution to the"
            f" model: \u03b5 = {_eps_words(cl['epsilon'])} at \u03b4 = {delta:g} (tier {tier},"
            f" {label}). Record-level DP was off, so an update that someone decrypts on its own"
            " is not protected."
        )
        weakest = strongest = (
            f"Every client: \u03b5 = {_eps_words(cl['epsilon'])} (client-level, the same for all)."
        )
    else:
        headline = (
            "Differential privacy was OFF: this run gives no formal guarantee about any training"
            " record."
        )
        weakest = strongest = "No formal guarantee for any client (no differential privacy)."
    warnings = []
    if f.fixed_noise_seed:
        warnings.append(
            "NOT PRIVATE: devices drew their DP randomness from a fixed test seed ("
            + ", ".join(f.test_seeded)
            + "): the epsilon guarantee does not hold."
        )
    if (
        f.record_dp
        and acct["cross_check"]
        and acct["cross_check"]["all_at_or_above_lower_bound"] is False
    ):
        warnings.append(
            "A reported epsilon is below the lower bound an independent PLD accountant proves."
        )
    if not f.he_on:
        warnings.append("Updates were not encrypted.")
    if not f.record_dp and cl is None:
        warnings.append("No differential privacy.")
    if acct["client_records"]["unsigned_lines"]:
        warnings.append(
            f"{acct['client_records']['unsigned_lines']} ledger line(s) carry no client-signed"
            " record: the server alone wrote them."
        )
    eps_hi = weak["epsilon"] if weak else cl["epsilon"] if cl else None
    eps_lo = strong["epsilon"] if strong else cl["epsilon"] if cl else None
    return {
        "dp": f.record_dp or cl is not None,
        "unit": done["privacy_unit"]["unit"],
        "client_level_epsilon": cl["epsilon"] if cl else None,
        "encrypted": f.he_on,
        "scheme": f.scheme,
        "headline": headline,
        "weakest": weakest,
        "strongest": strongest,
        "encryption": enc_words,
        "epsilon_max": eps_hi,
        "epsilon_min": eps_lo,
        "weakest_client": weak["client_id"] if weak else None,
        "strongest_client": strong["client_id"] if strong else None,
        "delta": delta,
        "tier": tier,
        "tier_label": label,
        "tier_source": TIER_SOURCE,
        "max_epsilon": float(cap) if cap is not None else None,
        "clients": len(f.clients),
        "rounds": len(f.rounds),
        "refusals": sum(len(c.rounds_refused) for c in f.clients),
        "final_accuracy": final,
        "bytes_encrypted": egress["totals"]["bytes_encrypted"],
        "bytes_not_encrypted": egress["totals"]["bytes_not_encrypted"],
        "messages": egress["totals"]["messages"],
        "warnings": warnings,
    }


def _cards(r: Mapping[str, Any]) -> str:
    s = r["summary"]
    tier = s["tier"]
    tcls = TIER_CLASS.get(tier, "t0")
    cards = []
    if s["dp"] and not r["accounting"]["dp"]:
        cards.append(
            f'<div class="card {tcls}"><div class="label">Client-level guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_max", eps_text(s["epsilon_max"]))}</div>'
            f'<div class="sub">every client &middot; tier {num(r, "summary.tier", str(tier))}</div></div>'
        )
        cards.append(
            '<div class="card t0"><div class="label">Record-level DP</div>'
            '<div class="value">OFF</div><div class="sub">a decrypted single update is not'
            " protected</div></div>"
        )
        cards.append(
            f'<div class="card"><div class="label">Budget (client-level)</div>'
            f'<div class="value">\u03b5 \u2264 {num(r, "summary.max_epsilon", format(s["max_epsilon"], "g"))}</div>'
            f'<div class="sub">\u03b4 = {num(r, "summary.delta", format(s["delta"], "g"))}</div></div>'
        )
    elif s["dp"]:
        cards.append(
            f'<div class="card {tcls}"><div class="label">Weakest guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_max", eps_text(s["epsilon_max"]))}</div>'
            f'<div class="sub">{esc(s["weakest_client"])} &middot; tier {num(r, "summary.tier", str(tier))}</div></div>'
        )
        s_tier, _ = epsilon_tier(s["epsilon_min"])
        cards.append(
            f'<div class="card {TIER_CLASS.get(s_tier, "t0")}"><div class="label">Strongest guarantee</div>'
            f'<div class="value">\u03b5 = {num(r, "summary.epsilon_min", eps_text(s["epsilon_min"]))}</div>'
            f'<div class="sub">{esc(s["strongest_client"])}</div></div>'
        )
        cards.append(
            f'<div class="card"><div class="label">Budget per client</div>'
            f'<div class="value">\u03b5 \u2264 {num(r, "summary.max_epsilon", format(s["max_epsilon"], "g"))}</div>'
            f'<div class="sub">\u03b4 = {num(r, "summary.delta", format(s["delta"], "g"))} &middot; '
            f"{num(r, 'summary.refusals', str(s['refusals']))} refusal(s)</div></div>"
        )
    else:
        cards.append(
            '<div class="card t0"><div class="label">Differential privacy</div>'
            '<div class="value">OFF</div><div class="sub">no formal guarantee (no \u03b5)</div></div>'
        )
    cards.append(
        f'<div class="card {"t1" if s["encrypted"] else "t3"}"><div class="label">Updates encrypted</div>'
        f'<div class="value">{esc(s["scheme"].upper() if s["encrypted"] else "NO")}</div>'
        f'<div class="sub">{num(r, "summary.bytes_encrypted", size_text(s["bytes_encrypted"]))} encrypted, '
        f"{num(r, 'summary.bytes_not_encrypted', size_text(s['bytes_not_encrypted']))} not</div></div>"
    )
    cards.append(
        f'<div class="card"><div class="label">Federation</div>'
        f'<div class="value">{num(r, "summary.clients", str(s["clients"]))} clients</div>'
        f'<div class="sub">{num(r, "summary.rounds", str(s["rounds"]))} rounds &middot; '
        f"{num(r, 'summary.messages', str(s['messages']))} messages sent</div></div>"
    )
    base = r["utility"]["baseline"]
    base_txt = (
        f"non-private baseline {pct(base['final_accuracy'])}"
        if base
        else "no non-private baseline run"
    )
    cards.append(
        f'<div class="card"><div class="label">Final accuracy</div>'
        f'<div class="value">{num(r, "summary.final_accuracy", pct(s["final_accuracy"]))}</div>'
        f'<div class="sub">held-out set &middot; {esc(base_txt)}</div></div>'
    )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _tiers(s: Mapping[str, Any]) -> str:
    ranges = {1: "\u03b5 \u2264 1", 2: "1 < \u03b5 \u2264 10", 3: "\u03b5 > 10"}
    boxes = []
    for t, _, meaning in TIERS:
        here = " here" if t == s["tier"] else ""
        title = f"Tier {t} \u2014 {ranges[t]}"
        boxes.append(f'<div class="tier t{t}{here}"><b>{esc(title)}</b>{esc(meaning)}</div>')
    return (
        '<div class="tiers" id="tiers">'
        + "".join(boxes)
        + "</div>"
        + f'<p class="source">Epsilon tiers: {esc(s["tier_source"])}. Smaller \u03b5 is stronger.</p>'
    )


def render_summary(r: Mapping[str, Any]) -> str:
    s = r["summary"]
    out = ['<section id="summary"><h2>Summary in plain language</h2>']
    out.append(
        f'<p class="headline {TIER_CLASS.get(s["tier"], "t0")}" id="headline">{esc(s["headline"])}</p>'
    )
    out.append(_cards(r))
    out.append(_tiers(s))
    good = []
    if s["dp"]:
        good.append(s["weakest"])
        good.append(s["strongest"])
        good.append(
            f"What \u03b5 means: for any single training record, anything anyone can observe"
            f" (updates, models, the final model) becomes at most e^\u03b5 times more or less"
            f" likely because that record was used, except with probability \u03b4 ="
            f" {s['delta']:g}. The protected unit is one record, not one person or one client."
        )
    if s["encrypted"]:
        good.append(s["encryption"])
    good.append("Raw training data never left any device.")
    caveats = [] if s["encrypted"] else [s["encryption"]]
    caveats += [
        f"Not covered by \u03b5: {rel['release']} ({rel['content']})."
        for rel in r["releases_not_covered"]
    ]
    if s["encrypted"]:
        enc = r["encryption"]
        if enc.get("custody") == "threshold":
            t = enc.get("threshold") or {}
            caveats.append(
                f"Key custody: threshold ({t.get('threshold', 'T')} of {t.get('parties', 'n')}):"
                " fewer clients, even together with the server, cannot read an individual"
                " update; that many together could."
            )
        else:
            caveats.append(
                "Key custody: every client holds the same decryption key; a server colluding with"
                " one client could read individual updates."
            )
    if s["dp"] and r["mechanism"]["rng"]["fixed_seed"]:
        caveats.append("NOT PRIVATE: some devices drew their DP randomness from a fixed test seed.")
    out.append(
        '<div class="two"><div class="box good"><h3>What is protected</h3>'
        + ul(good)
        + '</div><div class="box warn"><h3>What is not</h3>'
        + ul(caveats)
        + "</div></div>"
    )
    if s["warnings"]:
        out.append(
            '<div class="box bad" id="warnings"><h3>Warnings</h3>' + ul(s["warnings"]) + "</div>"
        )
    out.append("</section>")
    return "".join(out)
