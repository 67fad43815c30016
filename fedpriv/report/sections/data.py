"""Sections 3-4: where the data lives, and what left each device (with the page's appendix)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, pill, size_text, table
from fedpriv.report.sections.base import Section

__all__ = ["SECTIONS", "TRAIN_METRIC_KEYS", "render_appendix"]

# The keys the ClientApp puts in its plaintext train reply (fedpriv.apps.client.handle_train).
TRAIN_METRIC_KEYS = (
    "num-examples",
    "weight-used",
    "steps",
    "epsilon",
    "noise-multiplier",
    "sample-rate",
    "train-loss",
    "clipped",
    "refused",
    "update-bytes",
    "train-seconds",
    "encrypt-seconds",
)


def build_data_locations(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    d = f.data
    return {
        "dataset": str(d.get("dataset", "")),
        "partitioner": str(d.get("partitioner", "")),
        "dirichlet_alpha": d.get("alpha") if d.get("partitioner") == "dirichlet" else None,
        "sites": [
            {
                "client_id": c.client_id,
                "records": c.records,
                "local_test_fraction": float(d.get("test_fraction", 0.0)),
                "leaves_device": False,
                "rounds_sampled": c.rounds_sampled,
                "rounds_trained": c.rounds_trained,
            }
            for c in f.clients
        ],
        "heldout": {
            "records": f.metrics.get("heldout_examples"),
            "held_by": "the evaluator (key holder); not any client's training data",
        },
        "statement": (
            "Training records stay on each device: only the messages listed under 'what left each"
            " device' were sent. Each client's local test split also stays on the device."
        ),
    }


def render_data_locations(r: Mapping[str, Any]) -> str:
    d = r["data_locations"]
    alpha = f", Dirichlet \u03b1 = {d['dirichlet_alpha']:g}" if d["dirichlet_alpha"] else ""
    return (
        f"<p>{esc(d['statement'])}</p><p>Dataset <code>{esc(d['dataset'])}</code>, split"
        f" {esc(d['partitioner'])}{esc(alpha)}; held-out set: {esc(d['heldout']['records'])}"
        f" records, held by {esc(d['heldout']['held_by'])}.</p>"
        + table(
            [
                "site (client)",
                "training records",
                "local test share",
                "records leave the device",
                "rounds trained",
            ],
            (
                [
                    esc(s["client_id"]),
                    esc(s["records"]),
                    f"{100 * s['local_test_fraction']:.0f}%",
                    pill(not s["leaves_device"], "never", "LEAVES"),
                    esc(", ".join(map(str, s["rounds_trained"])) or "none"),
                ]
                for s in d["sites"]
            ),
            numeric=(1, 2),
        )
    )


def _update_content(scheme: str, n: int) -> str:
    """What a model-update message holds, in words."""
    if scheme == "bfv":
        return (
            f"BFV ciphertexts (Microsoft SEAL via TenSEAL, seeded symmetric encryption) of the"
            f" vector [n_k*w_k ({n} values), n_k, 1] in fixed point; values clipped to the public"
            " range first (clips are counted)"
        )
    if scheme == "ckks":
        return f"CKKS ciphertexts (TenSEAL) of the vector [n_k*w_k ({n} values), n_k, 1]"
    return f"plaintext float32 vector [n_k*w_k ({n} values), n_k, 1]: readable by the server"


def build_egress(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [
        {
            "seq": int(e["seq"]),
            "round": int(e["round"]),
            "client_id": str(e["client_id"]),
            "message": str(e.get("message", "")),
            "part": str(e.get("part", "")),
            "kind": str(e["kind"]),
            "bytes": int(e["bytes"]),
            "sha256": str(e.get("sha256") or ""),
            "encrypted": bool(e["encrypted"]),
            "dp_protected": bool(e["dp_protected"]),
            "accepted": bool(e.get("accepted", True)),
            "hash": str(e["hash"]),
        }
        for e in f.egress.entries
    ]
    kinds: dict[str, dict[str, Any]] = {}
    for msg in messages:
        k = kinds.setdefault(
            msg["kind"],
            {"kind": msg["kind"], "messages": 0, "bytes": 0, "encrypted": set(), "dp": set()},
        )
        k["messages"] += 1
        k["bytes"] += msg["bytes"]
        k["encrypted"].add(msg["encrypted"])
        k["dp"].add(msg["dp_protected"])
    desc = {
        "model-update": _update_content(f.scheme, int(f.metrics.get("num_values", 0))),
        "train-metrics": "plaintext metric record: " + ", ".join(TRAIN_METRIC_KEYS),
        "client-record": "the client's signed record: round, status, DP history [sigma, q, steps]"
        " (q = 1/ceil(n/B) reveals the local data size within a batch), epsilon, digests",
        "identity": "client id and signature",
        "refusal": "why the client refused (plaintext)",
        "eval-metrics": "local test-split size, loss and accuracy of the global model",
    }
    summary = [
        {
            "kind": k["kind"],
            "messages": k["messages"],
            "bytes": k["bytes"],
            "encrypted": "mixed" if len(k["encrypted"]) > 1 else next(iter(k["encrypted"])),
            "dp_protected": "mixed" if len(k["dp"]) > 1 else next(iter(k["dp"])),
            "content": desc.get(k["kind"], "see the egress record"),
        }
        for k in kinds.values()
    ]
    per_client = []
    for c in f.clients:
        mine = [m for m in messages if m["client_id"] == c.client_id]
        per_client.append(
            {
                "client_id": c.client_id,
                "messages": len(mine),
                "bytes_encrypted": sum(m["bytes"] for m in mine if m["encrypted"]),
                "bytes_not_encrypted": sum(m["bytes"] for m in mine if not m["encrypted"]),
                "bytes_dp_protected": sum(m["bytes"] for m in mine if m["dp_protected"]),
            }
        )
    return {
        "source": f.egress.file,
        "summary": summary,
        "per_client": per_client,
        "messages": messages,
        "not_in_record": [
            {
                "kind": "flower-framing",
                "content": "Flower's message envelope: run, node and message ids, timestamps,"
                " record names",
                "encrypted": False,
                "dp_protected": False,
                "note": "carried by every message; the egress record counts the payload parts"
                " fedpriv puts in it, every one of them (train and evaluation replies)",
            }
        ],
        "totals": {
            "messages": len(messages),
            "bytes_encrypted": sum(m["bytes"] for m in messages if m["encrypted"]),
            "bytes_not_encrypted": sum(m["bytes"] for m in messages if not m["encrypted"]),
        },
    }


def render_egress(r: Mapping[str, Any]) -> str:
    eg = r["egress"]
    summary = table(
        ["kind", "messages", "bytes", "encrypted", "DP-protected", "content"],
        (
            [
                f"<code>{esc(k['kind'])}</code>",
                esc(k["messages"]),
                esc(size_text(k["bytes"])),
                pill(k["encrypted"]),
                pill(k["dp_protected"]),
                esc(k["content"]),
            ]
            for k in eg["summary"]
        ),
        numeric=(1, 2),
    )
    missing = table(
        ["also sent, not in the egress record", "content", "encrypted", "DP-protected", "note"],
        (
            [
                f"<code>{esc(k['kind'])}</code>",
                esc(k["content"]),
                pill(k["encrypted"]),
                pill(k["dp_protected"]),
                esc(k["note"]),
            ]
            for k in eg["not_in_record"]
        ),
    )
    per_client = table(
        ["client", "messages", "encrypted", "not encrypted", "DP-protected"],
        (
            [
                esc(c["client_id"]),
                esc(c["messages"]),
                esc(size_text(c["bytes_encrypted"])),
                esc(size_text(c["bytes_not_encrypted"])),
                esc(size_text(c["bytes_dp_protected"])),
            ]
            for c in eg["per_client"]
        ),
        numeric=(1, 2, 3, 4),
    )
    return (
        f"<p>From <code>{esc(eg['source'])}</code>, a hash-chained record of every message a"
        " client sent; each message is listed in the <a href='#appendix'>appendix</a>.</p>"
        + summary
        + missing
        + per_client
    )


def render_appendix(r: Mapping[str, Any]) -> str:
    """The page's appendix: every message of the egress record."""
    messages = table(
        [
            "#",
            "round",
            "client",
            "kind",
            "bytes",
            "encrypted",
            "DP",
            "accepted",
            "sha256 (first 16)",
        ],
        (
            [
                esc(m["seq"]),
                esc(m["round"]),
                esc(m["client_id"]),
                esc(m["kind"]),
                esc(m["bytes"]),
                pill(m["encrypted"]),
                pill(m["dp_protected"]),
                pill(m["accepted"]),
                f"<code>{esc(m['sha256'][:16])}</code>",
            ]
            for m in r["egress"]["messages"]
        ),
        numeric=(0, 1, 4),
        cls="small",
    )
    return (
        '<section id="appendix"><h2>Appendix: every message in the egress record</h2>'
        + messages
        + "</section>"
    )


SECTIONS = (
    Section(
        key="data_locations",
        title="Where the data lives",
        anchor="data",
        build=build_data_locations,
        render=render_data_locations,
    ),
    Section(
        key="egress",
        title="What left each device",
        anchor="egress",
        build=build_egress,
        render=render_egress,
    ),
)
