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
        head = kv(
            [
                ("scheme", esc(x["scheme"].upper())),
                ("ring degree N", esc(p.get("poly_modulus_degree"))),
                ("coefficient modulus bits", esc(p.get("coeff_modulus_bits"))),
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
