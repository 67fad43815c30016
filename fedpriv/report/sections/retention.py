"""Sections 13-14: retention and deletion of what the run left, and the sign-off."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, kv, num, table
from fedpriv.report.sections.base import Section
from fedpriv.report.signing import fingerprint, public_key_pem

__all__ = ["SECTIONS", "draft_sign_off"]


def build_retention(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    artifacts = [
        ("config.json, config.toml", "the resolved configuration", "public", True),
        (
            "metrics.json",
            "per-round accuracy, per-client epsilon, example counts, training loss",
            "contains releases not covered by epsilon",
            True,
        ),
        (
            "privacy_ledger.jsonl",
            "every client's DP history per round (hash-chained)",
            "needed to recompute epsilon: keep as long as the model is used",
            True,
        ),
        ("egress.jsonl", "what each client sent (hash-chained)", "audit record", True),
        (
            "model.safetensors",
            "the final model",
            "protected by record-level DP"
            if f.record_dp
            else "protected by client-level DP"
            if f.client_level is not None
            else "NOT DP-protected",
            True,
        ),
        (
            "globals/",
            "each round's encrypted aggregate" if f.he_on else "each round's aggregate (plaintext)",
            "readable by any holder of the client key" if f.he_on else "readable by anyone",
            "globals" in f.optional_folders,
        ),
        (
            "keys/client/",
            "the HE secret key (simulation only)",
            "SECRET: with it anyone can decrypt globals/; delete or move it off after the run",
            "keys/client" in f.optional_folders,
        ),
        (
            "clients/*/privacy_state.json",
            "each client's accountant history (simulation)",
            "deleting it resets that client's budget to zero: keep it while the data may be"
            " trained on again",
            "clients" in f.optional_folders,
        ),
        ("privacy_report.json, privacy_report.html", "this report", "public", True),
    ]
    return {
        "policy": f.options.retention
        or "No retention period was set when this report was built; the controller must set one"
        " (GDPR Art. 5(1)(e)).",
        "artifacts": [
            {"path": path, "contents": what, "handling": how}
            for path, what, how, present in artifacts
            if present
        ],
        "signing_key": "the private signing key is kept outside the run folder (under"
        " $FEDPRIV_HOME/signing, mode 0600, unless --signing-key named another file); keep it"
        " to re-sign a rebuilt report",
        "deletion": "Training records never left the devices; deleting a device's data does not"
        " remove its influence from the model, which DP bounds per record.",
    }


def render_retention(r: Mapping[str, Any]) -> str:
    t = r["retention"]
    return (
        f"<p><b>Policy:</b> {esc(t['policy'])}</p>"
        + table(
            ["path (in the run folder)", "contents", "handling"],
            (
                [f"<code>{esc(x['path'])}</code>", esc(x["contents"]), esc(x["handling"])]
                for x in t["artifacts"]
            ),
        )
        + f"<p>{esc(t['signing_key'])}.</p><p>{esc(t['deletion'])}</p>"
    )


def draft_sign_off(f: RunFacts, public_key: Ed25519PublicKey) -> dict[str, Any]:
    """The sign-off before its signature: who signs, when, what, and how to check it.

    Built by the assembler when it signs (it alone holds the key), not from the facts alone.
    """
    return {
        "algorithm": "Ed25519",
        "public_key_pem": public_key_pem(public_key),
        "fingerprint": fingerprint(public_key),
        "key_kind": "per-run key"
        if f.options.signing_key is None
        else "key given with --signing-key",
        "signed_at": f.environment.clock(),
        "signed_content": (
            "the canonical JSON of this report (keys sorted, no whitespace, UTF-8) without"
            " sign_off.signature; through it the SHA-256 of every tracked file and the head hashes"
            " of the ledger and egress chains"
        ),
        "how_to_verify": "fedpriv report verify RUN_DIR --trusted-key <fingerprint obtained from"
        " the run's owner>",
    }


def render_sign_off(r: Mapping[str, Any]) -> str:
    s = r["sign_off"]
    return kv(
        [
            ("algorithm", esc(s["algorithm"])),
            ("key", esc(s["key_kind"])),
            ("public key fingerprint (SHA-256)", num(r, "sign_off.fingerprint", s["fingerprint"])),
            ("signed at", esc(s["signed_at"])),
            ("what is signed", esc(s["signed_content"])),
            ("signature", f'<code class="wrap">{esc(s["signature"])}</code>'),
            ("how to verify", f"<code>{esc(s['how_to_verify'])}</code>"),
        ]
    ) + (
        "<p>A valid signature proves the report was not changed since it was signed by the key"
        " above; it proves who signed only if you obtained that fingerprint from the run's owner"
        " through another channel. <code>fedpriv report verify</code> also recomputes every"
        " client's \u03b5 from the ledger and checks the hash chains and the egress record.</p>"
    )


SECTIONS = (
    Section(
        key="retention",
        title="Retention and deletion",
        anchor="retention",
        build=build_retention,
        render=render_retention,
    ),
    Section(
        key="sign_off",
        title="Sign-off",
        anchor="signoff",
        build=None,
        render=render_sign_off,
    ),
)
