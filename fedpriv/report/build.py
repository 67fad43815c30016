"""Build the signed privacy-budget report (``privacy_report.json`` + ``.html``) from a run folder.

The report is assembled only from the run's own records (config, metrics, the hash-chained privacy
ledger and egress record, the public HE parameters), has the fourteen sections of a privacy-budget
report (identification ... sign-off, see ``docs/privacy-report.md``), is validated against the
JSON Schema shipped with the package, and is signed with Ed25519 over its canonical JSON.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib.metadata
import json
import math
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError, VerificationError
from fedpriv.fileio import atomic_write_text
from fedpriv.privacy.accounting import DpEvent
from fedpriv.report.canonical import canonical_bytes, file_text, finite, sha256_file
from fedpriv.report.epsilon import history_key, opacus_eps, pld_eps
from fedpriv.report.records import REPORT_HTML, REPORT_JSON, RunRecords, load_records
from fedpriv.report.signing import fingerprint, load_or_create_key, public_key_pem, sign

__all__ = [
    "PLD_TOLERANCE",
    "REPORT_TYPE",
    "SCHEMA_VERSION",
    "BuildOptions",
    "ReportPaths",
    "build_report",
    "client_sort_key",
    "epsilon_tier",
    "signed_payload",
    "validate_report",
    "write_report",
]

SCHEMA_VERSION = "1.0"
REPORT_TYPE = "fedpriv.privacy_report"
# PLD is typically a little *below* PRV (tighter); only a reported epsilon more than 2% under the
# independent PLD value counts as under-reporting.
PLD_TOLERANCE = 0.02
# SEAL's 128-bit classical-security bound on the total coefficient-modulus bits per ring degree
# (HomomorphicEncryption.org standard, 2018), which SEAL enforces by default.
HE_128_MAX_BITS = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
_SOFTWARE = (
    "fedpriv",
    "torch",
    "opacus",
    "flwr",
    "tenseal",
    "dp-accounting",
    "cryptography",
    "numpy",
    "matplotlib",
    "jsonschema",
)
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
# "How to DP-fy ML" (Ponomareva et al., JAIR 2023), section 5.2: epsilon tiers.
TIERS = (
    (1, 1.0, "strong formal privacy guarantees"),
    (2, 10.0, "reasonable privacy guarantees"),
    (3, math.inf, "weak to no formal privacy guarantees"),
)
TIER_SOURCE = (
    'Ponomareva et al., "How to DP-fy ML: A Practical Guide to Machine Learning with Differential'
    ' Privacy", JAIR 77 (2023), section 5.2'
)


@dataclass(frozen=True)
class BuildOptions:
    """What the run's records cannot say and a person must (all optional)."""

    signing_key: Path | None = None
    """PEM Ed25519 private key to sign with; default: the run's own key under $FEDPRIV_HOME."""
    baseline: Path | None = None
    """A non-private run folder to compare utility against."""
    controller: str = ""
    purpose: str = ""
    retention: str = ""


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    html: Path
    key: Path
    """Where the private signing key lives (never inside the run folder)."""
    fingerprint: str
    seconds: float


def client_sort_key(cid: str) -> tuple[int, str]:
    """Natural order: client-2 before client-10."""
    return (len(cid), cid)


def epsilon_tier(eps: float | str | None) -> tuple[int | None, str]:
    """The "How to DP-fy ML" tier of an epsilon (None: no DP, so no formal guarantee)."""
    if eps is None:
        return None, "no formal privacy guarantee (differential privacy was off)"
    value = math.inf if eps == "inf" else float(eps)
    for tier, bound, label in TIERS:
        if value <= bound:
            return tier, label
    return 3, TIERS[-1][2]  # pragma: no cover - the last bound is infinite


def signed_payload(doc: dict[str, Any]) -> bytes:
    """The bytes the signature covers: the canonical report without ``sign_off.signature``."""
    body = copy.deepcopy(doc)
    body.get("sign_off", {}).pop("signature", None)
    return canonical_bytes(body)


def validate_report(doc: dict[str, Any]) -> list[str]:
    """Every JSON Schema violation of ``doc`` (empty when valid), as 'path: message' lines."""
    import jsonschema

    from fedpriv.report.schema import load_schema

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '(top)'}: {e.message}" for e in errors]


# --------------------------------------------------------------------------- helpers


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fmt_eps(eps: float | str | None) -> str:
    if eps is None:
        return "n/a"
    return "infinite" if eps == "inf" else f"{float(eps):.2f}"


def _history(raw: Any) -> list[DpEvent]:
    return [DpEvent.from_any(h) for h in (raw or [])]


class _Pld:
    """PLD epsilons, computed once per distinct history (clients of equal size share one)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta

    def __call__(self, hist: list[DpEvent]) -> float:
        return pld_eps(self.delta, history_key(hist))


@dataclass(frozen=True)
class _Client:
    """One client's view assembled from the ledger and metrics."""

    client_id: str
    records: int | None
    ledger: tuple[dict[str, Any], ...]
    metrics: tuple[tuple[int, dict[str, Any]], ...]

    @property
    def final(self) -> dict[str, Any] | None:
        return self.ledger[-1] if self.ledger else None

    @property
    def rounds_sampled(self) -> list[int]:
        return [r for r, _ in self.metrics]

    @property
    def rounds_trained(self) -> list[int]:
        return [int(e["round"]) for e in self.ledger if e.get("trained")]

    @property
    def rounds_refused(self) -> list[int]:
        return [int(e["round"]) for e in self.ledger if e.get("status") == "refused"]


def _clients(rec: RunRecords) -> list[_Client]:
    by_ledger: dict[str, list[dict[str, Any]]] = {}
    for e in rec.ledger.entries:
        by_ledger.setdefault(str(e.get("client_id")), []).append(e)
    by_metrics: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for r in rec.metrics.get("rounds", []):
        for cid, c in (r.get("clients") or {}).items():
            by_metrics.setdefault(str(cid), []).append((int(r["round"]), c))
    sizes = rec.metrics.get("partition_sizes") or []
    out = []
    for cid in sorted(set(by_ledger) | set(by_metrics), key=client_sort_key):
        n: int | None = None
        for _, c in by_metrics.get(cid, []):
            if c.get("num_examples") is not None:
                n = int(c["num_examples"])
        if n is None and cid.startswith("client-") and cid[7:].isdigit():
            i = int(cid[7:])
            n = int(sizes[i]) if i < len(sizes) else None
        ledger = sorted(by_ledger.get(cid, []), key=lambda e: (int(e["round"]), int(e["seq"])))
        out.append(_Client(cid, n, tuple(ledger), tuple(by_metrics.get(cid, []))))
    return out


# --------------------------------------------------------------------------- sections


def _client_level(rec: RunRecords) -> dict[str, Any] | None:
    """Client-level DP (distributed discrete Gaussian under BFV) as planned and charged.

    The run charges one Poisson-subsampled Gaussian step (z, q) per round that ran, whoever took
    part, so the run's client-level epsilon after R rounds is that of [[z, q, R]].
    """
    plan = rec.client_level
    if plan is None:
        return None
    z, q = float(plan["noise_multiplier"]), float(plan["sample_rate"])
    delta = float(plan["delta"])
    rounds = max((int(r["round"]) for r in rec.metrics.get("rounds", [])), default=0)
    acc = str(rec.metrics.get("accountant", "prv"))
    hist = [DpEvent(z, q, rounds)] if rounds else []
    from_ledger = [
        float(e["client_level_epsilon"])
        for e in rec.ledger.entries
        if e.get("client_level_epsilon") is not None
    ]
    return {
        "noise_multiplier": z,
        "sample_rate": q,
        "clip_norm": float(plan["clip_norm"]),
        "k_min": int(plan["k_min"]),
        "delta": delta,
        "max_epsilon": float(plan["max_epsilon"]),
        "accountant": acc,
        "rounds_charged": rounds,
        "history": [e.as_list() for e in hist],
        "epsilon": finite(opacus_eps(acc, delta, history_key(hist))),
        "epsilon_pld": finite(pld_eps(delta, history_key(hist))),
        "epsilon_ledger_max": finite(max(from_ledger)) if from_ledger else None,
        "adjacency": "add/remove one client (all of its data)",
        "noise": "each client adds a discrete-Gaussian share (std z*C/sqrt(k_min), from the OS"
        " CSPRNG) before BFV encryption; only sums of at least k_min updates are used",
        "approximations": "clients are sampled as a fixed-size set, accounted as Poisson with"
        " q = clients per round / clients; a sum of discrete Gaussians is close to, not exactly,"
        " a discrete Gaussian",
    }


def _identification(rec: RunRecords, run_id: str) -> dict[str, Any]:
    m, cfg = rec.metrics, rec.config
    model_sha = next((sha for rel, sha, _ in rec.files if rel == "model.safetensors"), None)
    return {
        "run_id": run_id,
        "run_name": str(m.get("name", "")),
        "run_folder": rec.root.resolve().name,
        "deployment": "simulation" if rec.simulation else "deployment",
        "config_hash": str(m.get("config_hash", "")),
        "started": m.get("started"),
        "finished": m.get("finished"),
        "stop_reason": str(m.get("stop_reason") or ""),
        "report_created": _now(),
        "model": {
            "architecture": str(cfg.get("train", {}).get("model", "")),
            "num_values": int(m.get("num_values", 0)),
            "file": "model.safetensors" if model_sha else None,
            "sha256": model_sha,
        },
        "software": {
            **{pkg: _version(pkg) for pkg in _SOFTWARE},
            "python": platform.python_version(),
            "platform": platform.platform(terse=True),
            "recorded_when": "report built (by simulate: the same process as the run)",
        },
        "files": [{"path": rel, "sha256": sha, "bytes": size} for rel, sha, size in rec.files],
        "chains": {
            "ledger": {
                "path": rec.ledger.file,
                "lines": rec.ledger.lines,
                "head_hash": rec.ledger.head,
                "sha256": rec.ledger.sha256,
            },
            "egress": {
                "path": rec.egress.file,
                "lines": rec.egress.lines,
                "head_hash": rec.egress.head,
                "sha256": rec.egress.sha256,
            },
        },
    }


def _roles(rec: RunRecords, opts: BuildOptions) -> dict[str, Any]:
    he = rec.he_on
    sim = rec.simulation
    # `flwr run` without keys-dir: the ServerApp dealt the keys, so the server held the secret
    dealer = str(rec.metrics.get("key_dealer") or "")
    parties = [
        {
            "role": "controller",
            "who": opts.controller or "not stated when the report was built",
            "holds": "decides the purpose and means of the training",
            "can_see": "this report",
        },
        {
            "role": "server operator (aggregator)",
            "who": "the party running the Flower ServerApp",
            "holds": (
                "in this run also the HE secret: " + dealer
                if he and dealer
                else "public encryption parameters only (keys/server); no secret key"
                if he
                else "nothing secret: encryption was off"
            ),
            "can_see": (
                "encrypted updates and their sizes, the encrypted running sum, plaintext"
                " training and evaluation metrics"
                if he
                else "every client's update in plaintext, and plaintext metrics"
            ),
        },
        {
            "role": "data owners (clients)",
            "who": f"{len({e.get('client_id') for e in rec.ledger.entries})} sites, one per client id",
            "holds": "their own records (never sent), the shared HE secret key, their privacy state"
            if he
            else "their own records (never sent) and their privacy state",
            "can_see": "every decrypted global model" if he else "every global model",
        },
        {
            "role": "key dealer",
            "who": dealer
            or (
                "fedpriv simulate (acting for the data owners)"
                if sim
                else "whoever ran `fedpriv keys init` for the data owners"
            ),
            "holds": "created the HE secret and handed it to the clients only" if he else "nothing",
            "can_see": "what a client sees",
        },
        {
            "role": "evaluator",
            "who": "the simulation runner, as a key holder" if sim else "a key holder",
            "holds": "the held-out test set and a client key",
            "can_see": "each round's decrypted global model and its held-out accuracy",
        },
    ]
    return {
        "purpose": opts.purpose
        or "not stated when the report was built (use `fedpriv report build --purpose`)",
        "parties": parties,
    }


def _data_locations(rec: RunRecords, clients: list[_Client]) -> dict[str, Any]:
    d = rec.config.get("data", {})
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
            for c in clients
        ],
        "heldout": {
            "records": rec.metrics.get("heldout_examples"),
            "held_by": "the evaluator (key holder); not any client's training data",
        },
        "statement": (
            "Training records stay on each device: only the messages listed under 'what left each"
            " device' were sent. Each client's local test split also stays on the device."
        ),
    }


def _egress(rec: RunRecords, clients: list[_Client]) -> dict[str, Any]:
    scheme = str(rec.metrics.get("encryption", "off"))
    n = int(rec.metrics.get("num_values", 0))
    if scheme == "bfv":
        update_enc = (
            f"BFV ciphertexts (Microsoft SEAL via TenSEAL, seeded symmetric encryption) of the"
            f" vector [n_k*w_k ({n} values), n_k, 1] in fixed point; values clipped to the public"
            " range first (clips are counted)"
        )
    elif scheme == "ckks":
        update_enc = f"CKKS ciphertexts (TenSEAL) of the vector [n_k*w_k ({n} values), n_k, 1]"
    else:
        update_enc = (
            f"plaintext float32 vector [n_k*w_k ({n} values), n_k, 1]: readable by the server"
        )
    messages: list[dict[str, Any]] = [
        {
            "seq": int(e["seq"]),
            "round": int(e["round"]),
            "client_id": str(e["client_id"]),
            "kind": str(e["kind"]),
            "bytes": int(e["bytes"]),
            "sha256": str(e.get("sha256") or ""),
            "encrypted": bool(e["encrypted"]),
            "dp_protected": bool(e["dp_protected"]),
            "accepted": bool(e.get("accepted", True)),
            "hash": str(e["hash"]),
        }
        for e in rec.egress.entries
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
        "model-update": update_enc,
        "train-metrics": "plaintext metric record: " + ", ".join(TRAIN_METRIC_KEYS),
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
    for c in clients:
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
        "source": rec.egress.file,
        "summary": summary,
        "per_client": per_client,
        "messages": messages,
        "not_in_record": [
            {
                "kind": "evaluate-reply",
                "content": "local test-split size, loss and accuracy of the global model",
                "encrypted": False,
                "dp_protected": False,
                "note": "sent to the server each round a client evaluates; the egress record does"
                " not log these replies (aggregates are in metrics.json)",
            }
        ],
        "totals": {
            "messages": len(messages),
            "bytes_encrypted": sum(m["bytes"] for m in messages if m["encrypted"]),
            "bytes_not_encrypted": sum(m["bytes"] for m in messages if not m["encrypted"]),
        },
    }


def _encryption(rec: RunRecords) -> dict[str, Any]:
    scheme = str(rec.metrics.get("encryption", "off"))
    p = rec.params or {}
    params_sha = next((sha for rel, sha, _ in rec.files if rel == "keys/server/params.json"), None)
    clipped = sum(
        int(c.get("clipped_values") or 0)
        for r in rec.metrics.get("rounds", [])
        for c in (r.get("clients") or {}).values()
    )
    bounds = [
        float(r["quantization_error_bound"])
        for r in rec.metrics.get("rounds", [])
        if r.get("quantization_error_bound") is not None
    ]
    if scheme == "off":
        return {
            "scheme": "off",
            "enabled": False,
            "parameters": p,
            "params_fingerprint": str(rec.metrics.get("params_fingerprint", "")),
            "params_sha256": params_sha,
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
    n = int(p.get("poly_modulus_degree", 0))
    total_bits = sum(int(b) for b in p.get("coeff_modulus_bits", []))
    limit = HE_128_MAX_BITS.get(n)
    return {
        "scheme": scheme,
        "enabled": True,
        "parameters": p,
        "params_fingerprint": str(rec.metrics.get("params_fingerprint", "")),
        "params_sha256": params_sha,
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
            if not rec.metrics.get("key_dealer")
            else {
                "party": "server operator",
                "holds": "the HE secret as well: " + str(rec.metrics["key_dealer"]),
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


def _privacy_unit(rec: RunRecords) -> dict[str, Any]:
    cl = rec.client_level
    if cl is not None:
        both = rec.record_dp
        return {
            "dp": True,
            "unit": "record+client" if both else "client",
            "unit_description": (
                "All the data of one client (client-level DP on the aggregate)"
                + ("; in addition, each record by record-level DP-SGD." if both else ".")
            ),
            "adjacency": "add/remove one client"
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
    if not rec.record_dp:
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
            "The DP noise comes from torch's default generator (Mersenne Twister) seeded from"
            " OS entropy: not a cryptographically secure generator (Opacus' secure_mode needs"
            " torchcsprng, unavailable for this torch).",
        ],
        "covered_outputs": [
            "every encrypted model update each client sent",
            "every global model (the aggregate of DP updates: post-processing)",
            "the final model (model.safetensors)",
        ],
    }


def _mechanism(rec: RunRecords, clients: list[_Client]) -> dict[str, Any]:
    cfg = rec.config
    p, t = cfg.get("privacy", {}), cfg.get("train", {})
    seed = int(p.get("noise_seed", -1))
    per_client = []
    for c in clients:
        # Without DP-SGD there is no sampling rate or noise to report, only steps.
        trained = [e for e in c.ledger if e.get("trained") and rec.record_dp]
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
    return {
        "dp": rec.record_dp,
        "algorithm": "DP-SGD (Opacus), a fresh PrivacyEngine per round" if rec.record_dp else "SGD",
        "clip_norm": float(p.get("max_grad_norm", 0.0)) if rec.record_dp else None,
        "sampling": "Poisson (each record joins each step independently with probability q;"
        " q = 1/ceil(n/B))"
        if rec.record_dp
        else "shuffled mini-batches",
        "batch_size": int(t.get("batch_size", 0)),
        "local_epochs": int(t.get("local_epochs", 0)),
        "learning_rate": float(t.get("learning_rate", 0.0)),
        "rounds_configured": int(cfg.get("rounds", 0)),
        "rounds_run": len(rec.metrics.get("rounds", [])),
        "grad_sample_mode": str(p.get("grad_sample_mode", "")),
        "noise_planning": (
            f"planned per client so that every round it could train in stays within"
            f" target epsilon {float(p.get('target_epsilon', 0.0)):g}"
            if planned
            else f"fixed noise multiplier {float(p.get('noise_multiplier', 0.0)):g}"
        )
        if rec.record_dp
        else None,
        "rng": {
            "cryptographically_secure": False,
            "generator": "torch.Generator (Mersenne Twister), one per client per round",
            "seeded_from": "63 bits from the OS (secrets.randbits)"
            if seed < 0
            else f"a FIXED seed ({seed}): anyone who knows it can remove the noise",
            "fixed_seed": seed >= 0,
            "note": "Opacus secure_mode needs torchcsprng, which cannot be installed for this"
            " torch: the noise is not from a cryptographically secure generator.",
        },
        "per_client": per_client,
        "client_level": (
            "client-level DP on the aggregate: see accounting.client_level"
            if rec.client_level is not None
            else None
        ),
    }


def _accounting(rec: RunRecords, clients: list[_Client], pld: _Pld | None) -> dict[str, Any]:
    m = rec.metrics
    delta = float(m.get("delta", 0.0)) if rec.record_dp else None
    per_client: list[dict[str, Any]] = []
    for c in clients:
        f = c.final
        hist_raw = (f or {}).get("history") or []
        eps = finite((f or {}).get("epsilon", 0.0)) if rec.record_dp else None
        eps_pld: float | str | None = None
        if rec.record_dp and pld is not None:
            eps_pld = finite(pld(_history(hist_raw)))
        per_client.append(
            {
                "client_id": c.client_id,
                "epsilon": eps,
                "epsilon_pld": eps_pld,
                "history": [list(h) for h in hist_raw] if rec.record_dp else [],
                "rounds_trained": c.rounds_trained,
                "ledger_seq": int(f["seq"]) if f else None,
            }
        )
    per_round = []
    for r in m.get("rounds", []):
        rnd = int(r["round"])
        per_round.append(
            {
                "round": rnd,
                "clients": [
                    {
                        "client_id": str(e["client_id"]),
                        "status": str(e["status"]),
                        "epsilon": finite(e.get("epsilon")) if rec.record_dp else None,
                        "ledger_seq": int(e["seq"]),
                    }
                    for e in rec.ledger.entries
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
    if rec.record_dp:
        within = all(
            pc["epsilon_pld"] is None
            or pc["epsilon"] == "inf"
            or (
                pc["epsilon_pld"] != "inf"
                and float(pc["epsilon"]) >= float(pc["epsilon_pld"]) * (1 - PLD_TOLERANCE)
            )
            for pc in per_client
        )
    biggest = max((c.records or 0) for c in clients) if clients else 0
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
    return {
        "dp": rec.record_dp,
        "accountant": str(m.get("accountant", "")) if rec.record_dp else None,
        "accountant_library": f"opacus {_version('opacus')}" if rec.record_dp else None,
        "delta": delta,
        "delta_rationale": rationale,
        "cross_check": {
            "accountant": "pld",
            "library": f"dp-accounting {_version('dp-accounting')}",
            "value_discretization_interval": 1e-4,
            "relative_tolerance": PLD_TOLERANCE,
            "all_within_tolerance": within,
            "rule": "a reported epsilon more than the tolerance below the PLD epsilon fails"
            " verification (PLD is usually slightly tighter than PRV)",
        }
        if rec.record_dp
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
        "client_level": _client_level(rec),
    }


def _budget(rec: RunRecords, clients: list[_Client], acct: dict[str, Any]) -> dict[str, Any]:
    p = rec.config.get("privacy", {})
    refusals: list[dict[str, Any]] = [
        {
            "round": int(e["round"]),
            "client_id": str(e["client_id"]),
            "epsilon_spent": finite(e.get("epsilon")),
            "reason": str(e.get("reason") or ""),
        }
        for e in rec.ledger.entries
        if e.get("status") == "refused"
    ]
    cl = acct["client_level"]
    client_part: dict[str, Any] = {
        "client_max_epsilon": cl["max_epsilon"] if cl else None,
        "client_on_reach": (
            "Before each round the server computes the client-level epsilon the round would"
            " reach; if it passes client_max_epsilon the run stops (clients refuse such a round"
            " too). The reason is recorded as the run's stop reason."
        )
        if cl
        else None,
        "stop_reason": str(rec.metrics.get("stop_reason") or ""),
    }
    common: dict[str, Any] = {
        "refusals": refusals,
        "clients_at_budget": sorted({r["client_id"] for r in refusals}, key=client_sort_key),
        **client_part,
    }
    if not rec.record_dp:
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
    cap = float(p.get("max_epsilon", rec.metrics.get("max_epsilon", 0.0)))
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


def _releases(rec: RunRecords) -> list[dict[str, Any]]:
    encrypted = rec.metrics.get("encryption", "off") != "off"
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
            "content": "size of each client's local test split, loss and accuracy",
            "why_not_covered": "computed on local test records without noise; not logged in the"
            " egress record",
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
    if rec.record_dp and int(rec.config.get("privacy", {}).get("noise_seed", -1)) >= 0:
        out.insert(
            0,
            {
                "release": "the DP noise itself (fixed noise seed)",
                "recipient": "anyone who knows privacy.noise_seed",
                "content": "the noise added to every update can be regenerated and subtracted",
                "why_not_covered": "a fixed seed voids the guarantee: use it for tests only",
            },
        )
    if not rec.record_dp and rec.client_level is not None:
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
    if not rec.record_dp and rec.client_level is None:
        out.insert(
            0,
            {
                "release": "every model update and global model",
                "recipient": "server operator, clients, readers of the model"
                if rec.he_on
                else "server operator (plaintext), clients, readers of the model",
                "content": "models trained on the records without noise",
                "why_not_covered": "differential privacy was off: there is no epsilon",
            },
        )
    return out


def _final_accuracy(metrics: dict[str, Any]) -> float | None:
    for r in reversed(metrics.get("rounds", [])):
        if r.get("heldout_accuracy") is not None:
            return float(r["heldout_accuracy"])
    return None


def _utility(rec: RunRecords, baseline: Path | None) -> dict[str, Any]:
    m = rec.metrics
    final = _final_accuracy(m)
    base: dict[str, Any] | None = None
    if baseline is not None:
        bpath = baseline / "metrics.json"
        try:
            bm = json.loads(bpath.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StateError(f"{bpath}: cannot read the baseline's metrics ({exc})") from None
        base = {
            "run_folder": baseline.resolve().name,
            "run_name": str(bm.get("name", "")),
            "privacy_mode": str(bm.get("privacy_mode", "")),
            "encryption": str(bm.get("encryption", "")),
            "config_hash": str(bm.get("config_hash", "")),
            "metrics_sha256": sha256_file(bpath),
            "final_accuracy": _final_accuracy(bm),
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
            for r in m.get("rounds", [])
        ],
        "baseline": base,
        "accuracy_cost": gap,
        "note": "no non-private baseline was run for this report"
        if base is None
        else "baseline: the same task trained without DP (and usually without encryption)",
    }


def _audit(rec: RunRecords) -> dict[str, Any]:
    if rec.audit is None:
        return {
            "performed": False,
            "note": "No empirical privacy audit (e.g. membership inference or canaries) was run"
            " for this run.",
            "result": None,
        }
    return {
        "performed": True,
        "note": "audit.json found in the run folder (its sha256 is pinned under identification)",
        "result": rec.audit,
    }


def _retention(rec: RunRecords, opts: BuildOptions) -> dict[str, Any]:
    root = rec.root
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
            if rec.record_dp
            else "protected by client-level DP"
            if rec.client_level is not None
            else "NOT DP-protected",
            True,
        ),
        (
            "globals/",
            "each round's encrypted aggregate"
            if rec.he_on
            else "each round's aggregate (plaintext)",
            "readable by any holder of the client key" if rec.he_on else "readable by anyone",
            (root / "globals").is_dir(),
        ),
        (
            "keys/client/",
            "the HE secret key (simulation only)",
            "SECRET: with it anyone can decrypt globals/; delete or move it off after the run",
            (root / "keys" / "client").is_dir(),
        ),
        (
            "clients/*/privacy_state.json",
            "each client's accountant history (simulation)",
            "deleting it resets that client's budget to zero: keep it while the data may be"
            " trained on again",
            (root / "clients").is_dir(),
        ),
        ("privacy_report.json, privacy_report.html", "this report", "public", True),
    ]
    return {
        "policy": opts.retention
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


def _summary(
    rec: RunRecords, clients: list[_Client], acct: dict[str, Any], egress: dict[str, Any]
) -> dict[str, Any]:
    scheme = str(rec.metrics.get("encryption", "off"))
    final = _final_accuracy(rec.metrics)
    cap = rec.config.get("privacy", {}).get("max_epsilon") if rec.record_dp else None
    rows = [pc for pc in acct["per_client"] if pc["epsilon"] is not None]

    def eps_value(pc: dict[str, Any]) -> float:
        return math.inf if pc["epsilon"] == "inf" else float(pc["epsilon"])

    weak = max(rows, key=eps_value) if rows else None
    strong = min(rows, key=eps_value) if rows else None
    tier, label = epsilon_tier(weak["epsilon"] if weak else None)
    s_tier, s_label = epsilon_tier(strong["epsilon"] if strong else None)
    enc_words = (
        f"Every model update left its device encrypted ({scheme.upper()}); the server added"
        " ciphertexts without ever holding a decryption key."
        if rec.he_on
        else "Encryption was OFF: the server saw every model update in plaintext."
    )
    cl = acct["client_level"]
    delta = acct["delta"]
    if rec.record_dp and weak is not None and strong is not None:
        headline = (
            f"Record-level differential privacy protected every client's training records. The"
            f" weakest guarantee is \u03b5 = {_fmt_eps(weak['epsilon'])} at \u03b4 = {delta:g}"
            f" ({weak['client_id']}): tier {tier}, {label}."
        )
        if cl:
            headline += (
                f" Client-level DP also bounded each client's whole contribution: \u03b5 ="
                f" {_fmt_eps(cl['epsilon'])} at \u03b4 = {cl['delta']:g}."
            )
        weakest = (
            f"Weakest: {weak['client_id']} spent \u03b5 = {_fmt_eps(weak['epsilon'])} (tier {tier},"
            f" {label})."
        )
        strongest = (
            f"Strongest: {strong['client_id']} spent \u03b5 = {_fmt_eps(strong['epsilon'])} (tier"
            f" {s_tier}, {s_label})."
        )
    elif cl:
        weak = strong = None
        tier, label = epsilon_tier(cl["epsilon"])
        delta, cap = cl["delta"], cl["max_epsilon"]
        headline = (
            f"Client-level differential privacy protected each client's whole contribution to the"
            f" model: \u03b5 = {_fmt_eps(cl['epsilon'])} at \u03b4 = {delta:g} (tier {tier},"
            f" {label}). Record-level DP was off, so an update that someone decrypts on its own"
            " is not protected."
        )
        weakest = strongest = (
            f"Every client: \u03b5 = {_fmt_eps(cl['epsilon'])} (client-level, the same for all)."
        )
    else:
        headline = (
            "Differential privacy was OFF: this run gives no formal guarantee about any training"
            " record."
        )
        weakest = strongest = "No formal guarantee for any client (no differential privacy)."
    seed_fixed = rec.record_dp and int(rec.config.get("privacy", {}).get("noise_seed", -1)) >= 0
    warnings = []
    if seed_fixed:
        warnings.append("A fixed DP noise seed was used: the epsilon guarantee does not hold.")
    if (
        rec.record_dp
        and acct["cross_check"]
        and acct["cross_check"]["all_within_tolerance"] is False
    ):
        warnings.append(
            "A reported epsilon is below the independent PLD recomputation beyond tolerance."
        )
    if not rec.he_on:
        warnings.append("Updates were not encrypted.")
    if not rec.record_dp and cl is None:
        warnings.append("No differential privacy.")
    if (
        cl
        and cl["epsilon_pld"] not in (None, "inf")
        and cl["epsilon"] != "inf"
        and float(cl["epsilon"]) < float(cl["epsilon_pld"]) * (1 - PLD_TOLERANCE)
    ):
        warnings.append("The client-level epsilon is below its PLD recomputation.")
    eps_hi = weak["epsilon"] if weak else cl["epsilon"] if cl else None
    eps_lo = strong["epsilon"] if strong else cl["epsilon"] if cl else None
    return {
        "dp": rec.record_dp or cl is not None,
        "unit": _privacy_unit(rec)["unit"],
        "client_level_epsilon": cl["epsilon"] if cl else None,
        "encrypted": rec.he_on,
        "scheme": scheme,
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
        "clients": len(clients),
        "rounds": len(rec.metrics.get("rounds", [])),
        "refusals": sum(len(c.rounds_refused) for c in clients),
        "final_accuracy": final,
        "bytes_encrypted": egress["totals"]["bytes_encrypted"],
        "bytes_not_encrypted": egress["totals"]["bytes_not_encrypted"],
        "messages": egress["totals"]["messages"],
        "warnings": warnings,
    }


# --------------------------------------------------------------------------- assembly


def build_report(run_dir: Path, opts: BuildOptions | None = None) -> tuple[dict[str, Any], Path]:
    """Assemble and sign the report for ``run_dir``. Returns (report, private-key path).

    Raises
    ------
    VerificationError
        The ledger or egress chain is broken (a report must not vouch for altered records), or
        the assembled report does not satisfy its own schema.
    StateError
        A record the report needs is missing or unreadable.
    """
    opts = opts or BuildOptions()
    rec = load_records(Path(run_dir))
    run_id = rec.run_id
    clients = _clients(rec)
    pld = _Pld(float(rec.metrics.get("delta", 1e-5))) if rec.record_dp else None
    acct = _accounting(rec, clients, pld)
    egress = _egress(rec, clients)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "report_type": REPORT_TYPE,
        "summary": _summary(rec, clients, acct, egress),
        "identification": _identification(rec, run_id),
        "roles": _roles(rec, opts),
        "data_locations": _data_locations(rec, clients),
        "egress": egress,
        "encryption": _encryption(rec),
        "privacy_unit": _privacy_unit(rec),
        "mechanism": _mechanism(rec, clients),
        "accounting": acct,
        "budget_policy": _budget(rec, clients, acct),
        "releases_not_covered": _releases(rec),
        "utility": _utility(rec, opts.baseline),
        "audit": _audit(rec),
        "retention": _retention(rec, opts),
    }
    key, key_path = load_or_create_key(run_id, opts.signing_key)
    pub = key.public_key()
    doc["sign_off"] = {
        "algorithm": "Ed25519",
        "public_key_pem": public_key_pem(pub),
        "fingerprint": fingerprint(pub),
        "key_kind": "per-run key" if opts.signing_key is None else "key given with --signing-key",
        "signed_at": _now(),
        "signed_content": (
            "the canonical JSON of this report (keys sorted, no whitespace, UTF-8) without"
            " sign_off.signature; through it the SHA-256 of every tracked file and the head hashes"
            " of the ledger and egress chains"
        ),
        "how_to_verify": "fedpriv report verify RUN_DIR --trusted-key <fingerprint obtained from"
        " the run's owner>",
    }
    problems = validate_report(
        {**doc, "sign_off": {**doc["sign_off"], "signature": "A" * 86 + "=="}}
    )
    if problems:
        raise VerificationError(
            "the report does not match its schema:\n" + "\n".join(f"  - {p}" for p in problems)
        )
    doc["sign_off"]["signature"] = sign(key, signed_payload(doc))
    return doc, key_path


def write_report(run_dir: Path, opts: BuildOptions | None = None) -> ReportPaths:
    """Build, sign and write ``privacy_report.json`` and ``privacy_report.html`` into ``run_dir``.

    Both files are written or neither is replaced: the HTML is rendered before anything is written.
    """
    import time

    from fedpriv.report.html import render_html

    t0 = time.perf_counter()
    root = Path(run_dir)
    doc, key_path = build_report(root, opts)
    html = render_html(doc)
    atomic_write_text(root / REPORT_JSON, file_text(doc), mode=0o644)
    atomic_write_text(root / REPORT_HTML, html, mode=0o644)
    return ReportPaths(
        root / REPORT_JSON,
        root / REPORT_HTML,
        key_path,
        str(doc["sign_off"]["fingerprint"]),
        time.perf_counter() - t0,
    )
