"""Section 5: encryption, its security level, key custody and collusion, quantisation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, kv, sig, table
from fedpriv.report.sections.base import Section

__all__ = ["HE_128_MAX_BITS", "SECTIONS"]

# SEAL's 128-bit classical-security bound on the total coefficient-modulus bits per ring degree
# (HomomorphicEncryption.org standard, 2018), which SEAL enforces by default.
HE_128_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


def build_encryption(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    p = dict(f.params or {})
    common = {
        "scheme": f.scheme,
        "enabled": f.he_on,
        "parameters": p,
        "params_fingerprint": str(f.metrics.get("params_fingerprint", "")),
        "params_sha256": f.file_sha256("keys/server/params.json"),
    }
    if not f.he_on:
        return {
            **common,
            "security": None,
            "key_custody": [
                {
                    "party": "server operator",
                    "holds": "no keys (nothing is encrypted)",
                    "can_decrypt": "everything: it reads each client's update in plaintext",
                }
            ],
            "collusion": "Not applicable: with encryption off the server sees every individual update.",
            "quantization": None,
        }
    clipped = sum(
        int(c.get("clipped_values") or 0)
        for r in f.rounds
        for c in (r.get("clients") or {}).values()
    )
    bounds = [
        float(r["quantization_error_bound"])
        for r in f.rounds
        if r.get("quantization_error_bound") is not None
    ]
    if "primes" in p:  # threshold custody (fedpriv.crypto.tparams)
        return _build_threshold(f, common, p, clipped, bounds)
    n = int(p.get("poly_modulus_degree", 0))
    total_bits = sum(int(b) for b in p.get("coeff_modulus_bits", []))
    limit = HE_128_MAX_BITS.get(n)
    return {
        **common,
        "security": {
            "level_bits": 128 if limit is not None and total_bits <= limit else None,
            "poly_modulus_degree": n,
            "total_coeff_modulus_bits": total_bits,
            "max_bits_for_128": limit,
            "standard": "HomomorphicEncryption.org security standard (2018), as enforced by SEAL",
        },
        "key_custody": [
            {
                "party": "server operator",
                "holds": "public parameters only (keys/server/params.json)",
                "can_decrypt": "nothing: it adds ciphertexts without a secret key",
            }
            if not f.metrics.get("key_dealer")
            else {
                "party": "server operator",
                "holds": "the HE secret as well: " + str(f.metrics["key_dealer"]),
                "can_decrypt": "everything it received, in this run",
            },
            {
                "party": "each client (data owner)",
                "holds": "the same HE secret key as every other client (shared-key design)",
                "can_decrypt": "every global model; any other client's update it could obtain",
            },
            {
                "party": "key dealer",
                "holds": "created the secret key; in simulation it is stored in keys/client/ of"
                " the run folder",
                "can_decrypt": "the same as a client while it keeps the key",
            },
        ],
        "collusion": (
            "Shared-key design: every client holds the same secret key. A server that colludes"
            " with any one client (or obtains keys/client/) can decrypt every individual update it"
            " received. Individual updates then remain protected only by record-level DP."
        ),
        "quantization": {
            "value_range": p.get("value_range"),
            "quant_scale": p.get("quant_scale"),
            "clipped_values_total": clipped,
            "max_error_bound": max(bounds) if bounds else None,
        },
    }


# ---------------------------------------------------------------------- threshold custody
def _decryption_facts(f: RunFacts) -> tuple[int, int, int, int]:
    """(partial-decryption requests this run, rounds decrypted, rounds failed, the largest
    count of partial decryptions one device reports having made with this key)."""
    import json

    requests = decrypted = failed = 0
    for r in f.rounds:
        d = r.get("decryption") or {}
        requests += int(d.get("requests") or 0)
        decrypted += d.get("status") == "decrypted"
        failed += d.get("status") == "failed"
    most = 0
    journal = f.root / "decryption.jsonl"
    if journal.exists():
        for line in journal.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(json.loads(line).get("decrypt_record") or "{}")
            except (ValueError, AttributeError):
                continue
            most = max(most, int(rec.get("decryptions_used") or 0))
    return requests, decrypted, failed, most


def _build_threshold(
    f: RunFacts, common: dict[str, Any], p: dict[str, Any], clipped: int, bounds: list[float]
) -> dict[str, Any]:
    th = dict(f.metrics.get("threshold") or {})
    n, t = int(p.get("parties", 0)), int(p.get("threshold", 0))
    lam = int(p.get("statistical_security", 0))
    d_max = int(p.get("max_decryptions", 0))
    ring = int(p.get("poly_modulus_degree", 0))
    bits = (
        sum(int(q).bit_length() for q in p.get("primes", []))
        + int(p.get("special_prime", 0)).bit_length()
    )
    limit = HE_128_MAX_BITS.get(ring)
    requests, decrypted, failed, most = _decryption_facts(f)
    where = (
        "keys/client/shares/, one file per client (simulation)"
        if f.simulation
        else "its own device (bundle or sealed delivery)"
    )
    return {
        **common,
        "custody": "threshold",
        "security": {
            "level_bits": 128 if limit is not None and bits <= limit else None,
            "poly_modulus_degree": ring,
            "total_coeff_modulus_bits": bits,
            "max_bits_for_128": limit,
            "standard": "HomomorphicEncryption.org security standard (2018), as enforced by SEAL;"
            " partial decryptions flooded for statistical security (docs/crypto.md)",
        },
        "threshold": {
            "parties": n,
            "threshold": t,
            "log2_q": th.get("log2_q"),
            "flood_bits": p.get("flood_bits"),
            "statistical_security": lam,
            "statistical_distance_log2": th.get("statistical_distance_log2"),
            "max_decryptions": d_max,
            "decryption_requests": requests,
            "rounds_decrypted": decrypted,
            "rounds_failed": failed,
            "most_decryptions_by_one_device": most,
            "decryption_check": th.get("decryption_check", "records"),
            "masked": bool(th.get("masked", True)),
            "server_learned": (
                "nothing beyond sizes, counts and timing: every partial decryption was masked"
                " with a pad only the clients derive, so what it relayed and combined is"
                " uniformly random to it; it never held a share or the mask key"
            ),
        },
        "key_custody": [
            {
                "party": "server operator (aggregator, relay and combiner)",
                "holds": "public parameters, the collective public key and the share index map"
                " (keys/server/); every ciphertext, each round's aggregate, the masked partial"
                " decryptions and their masked sum",
                "can_decrypt": "nothing: no share, no mask key; the combined decryption it"
                " relays is uniformly random to it, so it learns neither an update nor the"
                " aggregate",
            },
            {
                "party": f"each client (one of the {n} share holders)",
                "holds": f"one Shamir share of the secret key, in {where}; the collective"
                " public key; the federation mask key",
                "can_decrypt": "alone, nothing (one share is independent of the key); with the"
                " mask key it finishes each round's combined decryption: the aggregate, i.e."
                " the global model every client trains from",
            },
            {
                "party": f"any {t} share holders together",
                "holds": f"{t} shares: enough to rebuild the key",
                "can_decrypt": "every individual update they obtain (e.g. from the server):"
                f" the threshold T = {t} of {n} assumes no {t} clients collude",
            },
            {
                "party": f"the server with up to {t - 1} share holders",
                "holds": f"everything the server holds, {t - 1} shares and the mask key",
                "can_decrypt": "the aggregates (which the clients read anyway) and, with"
                f" statistical distance at most 2^-{lam} over the key's lifetime, nothing"
                " about any individual update",
            },
            {
                "party": "key dealer",
                "holds": "made the key, Shamir-shared it and erased it: keeps no share (the"
                " deployment dealer keeps the mask key to admit share-less nodes)",
                "can_decrypt": "nothing after dealing, unless it kept copies of the shares it"
                " dealt (bundles it wrote: delete them once delivered)",
            },
        ],
        "collusion": (
            f"Threshold custody: the key's secret is Shamir-shared, {t} of {n} clients decrypt"
            f" an aggregate together and fewer than {t}, even with the server, learn nothing about"
            " an individual update. Each decrypting client first checks the request: at least"
            " k_min distinct signed updates of this run and round, exactly as many as the"
            " aggregate declares, its own included when it trained"
            + (
                ", and the aggregate rebuilt from those updates. "
                if th.get("decryption_check") == "rebuild"
                else ". A malicious server could still frame one client's ciphertext as an aggregate"
                " with a forged count (decryption_check = 'rebuild' stops that). "
            )
            + "Not covered: a malicious client that submits a ciphertext cancelling the others,"
            " and all but one client colluding (they learn the last update from any aggregate;"
            " DP noise protects it)."
        ),
        "quantization": {
            "value_range": p.get("value_range"),
            "quant_scale": p.get("quant_scale"),
            "clipped_values_total": clipped,
            "max_error_bound": max(bounds) if bounds else None,
        },
    }


def render_encryption(r: Mapping[str, Any]) -> str:
    x = r["encryption"]
    if not x["enabled"]:
        head = (
            '<p class="box bad">Encryption was off: the server saw every update in plaintext.</p>'
        )
    else:
        sec = x["security"]
        level = (
            f"{sec['level_bits']}-bit" if sec["level_bits"] else "below 128-bit (check parameters)"
        )
        p = x["parameters"]
        q = x["quantization"]
        th = x.get("threshold")
        # Shared custody keeps its rows as they were; threshold custody names its custody.
        modulus = (
            [
                ("key custody", esc(x.get("custody", "threshold"))),
                ("ring degree N", esc(p.get("poly_modulus_degree"))),
                ("coefficient modulus", f"{len(p['primes'])} primes, log2 q = {sig(th['log2_q'])}"),
            ]
            if th
            else [
                ("ring degree N", esc(p.get("poly_modulus_degree"))),
                ("coefficient modulus bits", esc(p.get("coeff_modulus_bits"))),
            ]
        )
        head = kv(
            [
                ("scheme", esc(x["scheme"].upper())),
                *modulus,
                ("plaintext modulus", esc(p.get("plain_modulus"))),
                (
                    "security",
                    f"{esc(level)} ({esc(sec['total_coeff_modulus_bits'])} of at most"
                    f" {esc(sec['max_bits_for_128'])} modulus bits; {esc(sec['standard'])})",
                ),
                (
                    "parameters fingerprint",
                    f'<code class="wrap">{esc(x["params_fingerprint"])}</code>',
                ),
                (
                    "quantisation",
                    f"values clipped to \u00b1{esc(q['value_range'])},"
                    f" {esc(q['clipped_values_total'])} value(s) clipped in total;"
                    f" worst-case rounding error per weight {esc(sig(q['max_error_bound']))}",
                ),
            ]
        )
    th = x.get("threshold") if x["enabled"] else None
    if th:
        head += kv(
            [
                ("threshold", f"{esc(th['threshold'])} of {esc(th['parties'])} share holders"),
                (
                    "flooding",
                    f"sum of three uniforms of width 2^{esc(th['flood_bits'])}; statistical"
                    f" security \u03bb = {esc(th['statistical_security'])} (lifetime statistical"
                    f" distance \u2264 2^{sig(th['statistical_distance_log2'])})",
                ),
                (
                    "decryption budget",
                    f"{esc(th['decryption_requests'])} partial-decryption request(s) this run;"
                    f" a device made at most {esc(th['most_decryptions_by_one_device'])} of the"
                    f" key's D = {esc(th['max_decryptions'])}",
                ),
                (
                    "rounds decrypted",
                    f"{esc(th['rounds_decrypted'])} ({esc(th['rounds_failed'])} failed);"
                    f" request check: {esc(th['decryption_check'])}",
                ),
                ("what the server learned", esc(th["server_learned"])),
            ]
        )
    custody = table(
        ["party", "holds", "can decrypt"],
        ([esc(k["party"]), esc(k["holds"]), esc(k["can_decrypt"])] for k in x["key_custody"]),
    )
    return head + custody + f"<p><b>Collusion:</b> {esc(x['collusion'])}</p>"


SECTIONS = (
    Section(
        key="encryption",
        title="Encryption and key custody",
        anchor="encryption",
        build=build_encryption,
        render=render_encryption,
    ),
)
