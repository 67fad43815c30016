"""Sections 1-2: identification (what run, which records, which software) and roles."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedpriv.report.facts import RunFacts
from fedpriv.report.markup import esc, kv, table
from fedpriv.report.sections.base import Section

__all__ = ["SECTIONS"]


def build_identification(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    m, env = f.metrics, f.environment
    model_sha = f.file_sha256("model.safetensors")
    return {
        "run_id": f.run_id,
        "run_name": str(m.get("name", "")),
        "run_folder": f.root.resolve().name,
        "deployment": "simulation" if f.simulation else "deployment",
        "config_hash": str(m.get("config_hash", "")),
        "started": m.get("started"),
        "finished": m.get("finished"),
        "stop_reason": str(m.get("stop_reason") or ""),
        "report_created": f.created,
        "model": {
            "architecture": str(f.train.get("model", "")),
            "num_values": int(m.get("num_values", 0)),
            "file": "model.safetensors" if model_sha else None,
            "sha256": model_sha,
        },
        "software": {
            **dict(env.software),
            "python": env.python,
            "platform": env.platform,
            "recorded_when": "report built (by simulate: the same process as the run)",
        },
        "files": [{"path": t.path, "sha256": t.sha256, "bytes": t.bytes} for t in f.files],
        "chains": {
            name: {
                "path": chain.file,
                "lines": chain.lines,
                "head_hash": chain.head,
                "sha256": chain.sha256,
            }
            for name, chain in (("ledger", f.ledger), ("egress", f.egress))
        },
    }


def render_identification(r: Mapping[str, Any]) -> str:
    i = r["identification"]
    sw = ", ".join(f"{k} {v}" for k, v in i["software"].items() if k != "recorded_when")
    out = kv(
        [
            ("run id", f"<code>{esc(i['run_id'])}</code>"),
            ("run folder", f"<code>{esc(i['run_folder'])}</code> ({esc(i['deployment'])})"),
            ("started / finished", f"{esc(i['started'])} / {esc(i['finished'])}"),
            ("stop reason", esc(i["stop_reason"] or "completed all rounds")),
            ("report created", esc(i["report_created"])),
            ("config hash", f'<code class="wrap">{esc(i["config_hash"])}</code>'),
            (
                "model",
                f"{esc(i['model']['architecture'])}, {esc(i['model']['num_values'])} parameters,"
                f' sha256 <code class="wrap">{esc(i["model"]["sha256"])}</code>',
            ),
            (
                "software",
                esc(sw) + f" <span class='source'>({esc(i['software']['recorded_when'])})</span>",
            ),
        ]
    )
    files = table(
        ["file", "bytes", "sha256"],
        (
            [
                f"<code>{esc(t['path'])}</code>",
                esc(t["bytes"]),
                f'<code class="wrap">{esc(t["sha256"])}</code>',
            ]
            for t in i["files"]
        ),
        numeric=(1,),
        cls="small",
    )
    chains = table(
        ["hash-chained record", "lines", "head hash", "file sha256"],
        (
            [
                f"<code>{esc(c['path'])}</code>",
                esc(c["lines"]),
                f'<code class="wrap">{esc(c["head_hash"])}</code>',
                f'<code class="wrap">{esc(c["sha256"])}</code>',
            ]
            for c in i["chains"].values()
        ),
        numeric=(1,),
        cls="small",
    )
    return out + files + chains


def build_roles(f: RunFacts, done: Mapping[str, Any]) -> dict[str, Any]:
    he, sim, opts = f.he_on, f.simulation, f.options
    threshold = f.config.get("encryption", {}).get("key_custody") == "threshold"
    # `flwr run` without keys-dir: the ServerApp dealt the keys, so the server held the secret
    dealer = str(f.metrics.get("key_dealer") or "")
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
            "who": f"{len({e.get('client_id') for e in f.ledger.entries})} sites, one per client id",
            "holds": (
                "their own records (never sent), one share of the HE secret and the federation's"
                " mask key, their privacy state and policy"
                if threshold
                else "their own records (never sent), the shared HE secret key, their privacy state"
                " and policy"
            )
            if he
            else "their own records (never sent), their privacy state and policy",
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


def render_roles(r: Mapping[str, Any]) -> str:
    ro = r["roles"]
    return f"<p><b>Purpose:</b> {esc(ro['purpose'])}</p>" + table(
        ["role", "who", "holds", "can see"],
        (
            [esc(p["role"]), esc(p["who"]), esc(p["holds"]), esc(p["can_see"])]
            for p in ro["parties"]
        ),
    )


SECTIONS = (
    Section(
        key="identification",
        title="Identification",
        anchor="identification",
        build=build_identification,
        render=render_identification,
    ),
    Section(
        key="roles",
        title="Roles and purpose",
        anchor="roles",
        build=build_roles,
        render=render_roles,
    ),
)
