"""Read a run folder while it is being written, and turn it into what the monitor page shows.

The server writes ``metrics.json`` by atomic replace after each round and appends one line per
event to ``privacy_ledger.jsonl`` and ``egress.jsonl``; ``config.json`` appears first. A reader
can therefore see: no file yet, a half-written JSON file (a writer without atomic replace), or
a last JSONL line without its newline. :class:`RunReader` tolerates all three: a JSON file that
does not parse keeps the last good version, a partial last line waits for its newline, and a
file that shrinks or is replaced is read again from the start.

Only standard library: no Starlette here, so this module is cheap to test and to import.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["RunReader", "find_run_dir"]

_RUN_FILES = ("config.json", "metrics.json", "privacy_ledger.jsonl")
_LOSS_JUMP = 1.25  # a round's aggregate loss this many times the best so far is flagged
_RATE_WARN = 0.25  # refusal or failure rate flagged at this share of the sampled clients


def _is_run(p: Path) -> bool:
    return any((p / f).exists() for f in _RUN_FILES)


def find_run_dir(root: Path) -> Path | None:
    """``root`` itself when it is a run folder, else its newest run sub-folder (None: none yet).

    Watching a folder of runs (``runs/``) follows each new run as it starts.
    """
    if _is_run(root):
        return root
    best: tuple[float, Path] | None = None
    try:
        subs = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return None
    for p in subs:
        stamps = []
        for f in _RUN_FILES:
            try:
                stamps.append((p / f).stat().st_mtime)
            except OSError:
                continue
        if stamps and (best is None or max(stamps) > best[0]):
            best = (max(stamps), p)
    return best[1] if best else None


@dataclass
class _JsonFile:
    stamp: tuple[int, int, int] | None = None
    doc: dict[str, Any] | None = None
    torn: int = 0
    """Reads that found the file half-written (the last good version was kept)."""


@dataclass
class _JsonlTail:
    inode: int = -1
    offset: int = 0
    pending: bytes = b""
    entries: list[dict[str, Any]] = field(default_factory=list)
    bad_lines: int = 0


class RunReader:
    """Incremental, tolerant reader of one run folder (or of the newest run under a folder).

    Thread-safe: the web server calls :meth:`snapshot` from worker threads.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._run: Path | None = None
        self._json: dict[str, _JsonFile] = {}
        self._jsonl: dict[str, _JsonlTail] = {}

    # ------------------------------------------------------------------ file access
    def _switch(self) -> Path | None:
        run = find_run_dir(self.root)
        if run != self._run:
            self._run, self._json, self._jsonl = run, {}, {}
        return run

    def stamp(self) -> tuple[Any, ...]:
        """Changes whenever a file the page depends on changes (cheap: a few ``stat`` calls)."""
        run = find_run_dir(self.root)
        if run is None:
            return ("none",)
        out: list[Any] = [str(run)]
        for name in (*_RUN_FILES, "egress.jsonl", "privacy_report.json"):
            try:
                st = (run / name).stat()
                out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((name, None))
        return tuple(out)

    def _read_json(self, name: str) -> dict[str, Any] | None:
        assert self._run is not None
        cache = self._json.setdefault(name, _JsonFile())
        path = self._run / name
        try:
            st = path.stat()
        except OSError:
            return cache.doc  # gone for a moment (replace in progress) or not there yet
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == cache.stamp:
            return cache.doc
        try:
            doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            cache.torn += 1  # half-written: keep the last good version, retry on next change
            return cache.doc
        if isinstance(doc, dict):
            cache.stamp, cache.doc = stamp, doc
        return cache.doc

    def _read_jsonl(self, name: str) -> _JsonlTail:
        assert self._run is not None
        tail = self._jsonl.setdefault(name, _JsonlTail())
        path = self._run / name
        try:
            with path.open("rb") as f:
                st = os.fstat(f.fileno())
                if st.st_ino != tail.inode or st.st_size < tail.offset:
                    self._jsonl[name] = tail = _JsonlTail(inode=st.st_ino)
                f.seek(tail.offset)
                chunk = f.read()
        except OSError:
            return tail
        if not chunk:
            return tail
        data = tail.pending + chunk
        *complete, rest = data.split(b"\n")
        tail.offset += len(chunk)
        tail.pending = rest  # a line still being written: wait for its newline
        for line in complete:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                tail.bad_lines += 1
                continue
            if isinstance(entry, dict):
                tail.entries.append(entry)
        return tail

    # ------------------------------------------------------------------ view model
    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, as plain JSON-ready data."""
        with self._lock:
            run = self._switch()
            now = time.time()
            if run is None:
                return {
                    "generated": _iso(now),
                    "watching": str(self.root),
                    "run": {"status": "waiting", "folder": None},
                    "rounds": [],
                    "clients": [],
                    "events": [],
                    "signals": [],
                    "totals": {},
                    "files": {},
                }
            config = self._read_json("config.json") or {}
            metrics = self._read_json("metrics.json") or {}
            ledger = self._read_jsonl("privacy_ledger.jsonl")
            egress = self._read_jsonl("egress.jsonl")
            report = (run / "privacy_report.json").exists()
            return _view(run, self.root, config, metrics, ledger, egress, report, now, self)

    def torn_reads(self) -> int:
        return sum(j.torn for j in self._json.values())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def _status(config: dict[str, Any], metrics: dict[str, Any], report: bool) -> str:
    if not metrics:
        return "starting" if config else "waiting"
    if metrics.get("stop_reason"):
        return "stopped"
    if report:
        return "complete"
    if "final_round" in metrics:
        return "evaluated"
    if metrics.get("finished"):
        return "finished"
    return "running"


def _view(
    run: Path,
    root: Path,
    config: dict[str, Any],
    metrics: dict[str, Any],
    ledger: _JsonlTail,
    egress: _JsonlTail,
    report: bool,
    now: float,
    reader: RunReader,
) -> dict[str, Any]:
    privacy = config.get("privacy", {}) if isinstance(config.get("privacy"), dict) else {}
    fed = config.get("federation", {}) if isinstance(config.get("federation"), dict) else {}
    mode = str(metrics.get("privacy_mode") or privacy.get("mode") or "off")
    record_dp = mode in ("record", "both")
    client_dp = mode in ("client", "both")
    budget = _num(metrics.get("max_epsilon", privacy.get("max_epsilon"))) if record_dp else None
    cl_raw = metrics.get("client_level")
    cl: dict[str, Any] = cl_raw if isinstance(cl_raw, dict) else {}
    client_budget = _num(cl.get("max_epsilon", privacy.get("client_max_epsilon")))
    rounds_raw = [r for r in metrics.get("rounds", []) if isinstance(r, dict)]
    rounds_total = config.get("rounds") if isinstance(config.get("rounds"), int) else None

    rounds: list[dict[str, Any]] = []
    clients: dict[str, dict[str, Any]] = {}
    events: list[dict[str, Any]] = []
    signals: list[dict[str, Any]] = []
    best_fed_loss: float | None = None
    best_held_loss: float | None = None
    best_acc: float | None = None
    for r in rounds_raw:
        rnd = int(r.get("round", 0))
        sampled = int(r.get("sampled", 0) or 0)
        refused = int(r.get("refused", 0) or 0)
        failed = int(r.get("failed", 0) or 0)
        rejected = int(r.get("rejected", 0) or 0)
        cdict = r.get("clients", {}) if isinstance(r.get("clients"), dict) else {}
        train_s = [_num(c.get("train_seconds")) for c in cdict.values() if isinstance(c, dict)]
        train_s_ok = [t for t in train_s if t is not None and t > 0]
        refusal_rate = refused / sampled if sampled else 0.0
        failure_rate = (failed + rejected) / sampled if sampled else 0.0
        row: dict[str, Any] = {
            "round": rnd,
            "sampled": sampled,
            "accepted": int(r.get("accepted", 0) or 0),
            "refused": refused,
            "failed": failed,
            "rejected": rejected,
            "refusal_rate": refusal_rate,
            "failure_rate": failure_rate,
            "federated_accuracy": _num(r.get("federated_accuracy")),
            "federated_loss": _num(r.get("federated_loss")),
            "heldout_accuracy": _num(r.get("heldout_accuracy")),
            "heldout_loss": _num(r.get("heldout_loss")),
            "seconds": _num(r.get("seconds")),
            "aggregate_seconds": _num(r.get("aggregate_seconds")),
            "train_seconds_max": max(train_s_ok) if train_s_ok else None,
            "bytes_up": int(r.get("bytes_up_total", 0) or 0),
            "bytes_down": int(r.get("bytes_down_total", 0) or 0),
            "global_bytes": int(r.get("global_bytes", 0) or 0),
        }
        rounds.append(row)
        for cid, c in cdict.items():
            if not isinstance(c, dict):
                continue
            st = str(c.get("status", ""))
            e = clients.setdefault(
                cid,
                {
                    "id": cid,
                    "accepted": 0,
                    "refused": 0,
                    "failed": 0,
                    "rejected": 0,
                    "epsilon": None,
                    "client_epsilon": None,
                    "last_status": "",
                    "last_round": 0,
                    "last_reason": "",
                },
            )
            if st in ("accepted", "refused", "failed", "rejected"):
                e[st] += 1
            e["last_status"], e["last_round"] = st, rnd
            e["last_reason"] = str(c.get("reason") or "")
            eps = _num(c.get("epsilon"))
            if record_dp and eps is not None:
                e["epsilon"] = eps
            ceps = _num(c.get("client_epsilon"))
            if client_dp and ceps is not None:
                e["client_epsilon"] = ceps
            if st != "accepted":
                events.append(
                    {"round": rnd, "client_id": cid, "status": st, "reason": e["last_reason"]}
                )
        # DP-safe drift signals: only aggregates the server sees anyway.
        if refusal_rate >= _RATE_WARN or (
            refused and len(rounds) > 1 and refused > rounds[-2]["refused"]
        ):
            signals.append(
                {
                    "round": rnd,
                    "kind": "refusals",
                    "text": f"{refused} of {sampled} sampled clients refused ({refusal_rate:.0%})",
                }
            )
        if failure_rate >= _RATE_WARN:
            signals.append(
                {
                    "round": rnd,
                    "kind": "failures",
                    "text": f"{failed + rejected} of {sampled} replies failed or were rejected",
                }
            )
        for key, best, label in (
            ("federated_loss", best_fed_loss, "federated loss"),
            ("heldout_loss", best_held_loss, "held-out loss"),
        ):
            v = row[key]
            if v is not None and best is not None and v > _LOSS_JUMP * best and v - best > 1e-3:
                signals.append(
                    {
                        "round": rnd,
                        "kind": "loss-jump",
                        "text": f"{label} jumped to {v:.3f} (best so far {best:.3f})",
                    }
                )
        fl, hl, fa = row["federated_loss"], row["heldout_loss"], row["federated_accuracy"]
        if fl is not None:
            best_fed_loss = fl if best_fed_loss is None else min(best_fed_loss, fl)
        if hl is not None:
            best_held_loss = hl if best_held_loss is None else min(best_held_loss, hl)
        if fa is not None:
            if best_acc is not None and best_acc - fa > 0.1:
                signals.append(
                    {
                        "round": rnd,
                        "kind": "accuracy-drop",
                        "text": f"federated accuracy fell to {fa:.3f} (best so far {best_acc:.3f})",
                    }
                )
            best_acc = fa if best_acc is None else max(best_acc, fa)

    # The ledger is the privacy record of truth: its latest epsilon per client wins.
    ledger_refusals = 0
    for entry in ledger.entries:
        cid = str(entry.get("client_id", ""))
        if entry.get("status") == "refused":
            ledger_refusals += 1
        eps = _num(entry.get("epsilon"))
        if cid in clients and record_dp and eps is not None:
            clients[cid]["epsilon"] = eps
            clients[cid]["ledger_round"] = entry.get("round")
    client_rows = sorted(clients.values(), key=lambda c: (len(c["id"]), c["id"]))
    for c in client_rows:
        c["budget"] = budget
        c["budget_used"] = c["epsilon"] / budget if budget and c["epsilon"] is not None else None
        c["client_budget"] = client_budget if client_dp else None
    eps_values = [c["epsilon"] for c in client_rows if c["epsilon"] is not None]
    held = [r["heldout_accuracy"] for r in rounds if r["heldout_accuracy"] is not None]
    fed_acc = [r["federated_accuracy"] for r in rounds if r["federated_accuracy"] is not None]
    chain_ok = _chain_ok(ledger.entries)
    status = _status(config, metrics, report)
    try:
        updated = max(
            (run / f).stat().st_mtime
            for f in ("config.json", "metrics.json", "privacy_ledger.jsonl")
            if (run / f).exists()
        )
    except ValueError:
        updated = None
    return {
        "generated": _iso(now),
        "watching": str(root),
        "run": {
            "folder": str(run),
            "name": str(metrics.get("name") or config.get("name") or run.name),
            "status": status,
            "started": metrics.get("started"),
            "finished": metrics.get("finished"),
            "updated": _iso(updated) if updated else None,
            "rounds_total": rounds_total,
            "rounds_done": len(rounds),
            "progress": min(1.0, len(rounds) / rounds_total) if rounds_total else None,
            "privacy_mode": mode,
            "encryption": str(
                metrics.get("encryption") or config.get("encryption", {}).get("scheme", "")
            ),
            "num_clients": fed.get("num_clients"),
            "max_epsilon": budget,
            "client_max_epsilon": client_budget if client_dp else None,
            "delta": _num(metrics.get("delta", privacy.get("delta"))),
            "accountant": metrics.get("accountant") or privacy.get("accountant"),
            "stop_reason": str(metrics.get("stop_reason") or ""),
            "wall_seconds": _num(metrics.get("wall_seconds")),
            "report": report,
        },
        "totals": {
            "accepted": sum(r["accepted"] for r in rounds),
            "refused": sum(r["refused"] for r in rounds),
            "failed": sum(r["failed"] for r in rounds),
            "rejected": sum(r["rejected"] for r in rounds),
            "bytes_up": sum(r["bytes_up"] for r in rounds),
            "bytes_down": sum(r["bytes_down"] for r in rounds),
            "epsilon_max": max(eps_values) if eps_values else None,
            "epsilon_min": min(eps_values) if eps_values else None,
            "heldout_accuracy": held[-1] if held else None,
            "initial_heldout_accuracy": _num(metrics.get("initial_heldout_accuracy")),
            "federated_accuracy": fed_acc[-1] if fed_acc else None,
            "ledger_entries": len(ledger.entries),
            "ledger_refusals": ledger_refusals,
            "ledger_chain_ok": chain_ok,
            "egress_messages": len(egress.entries),
            "egress_bytes": sum(int(e.get("bytes", 0) or 0) for e in egress.entries),
        },
        "rounds": rounds,
        "clients": client_rows,
        "events": events[::-1][:200],
        "signals": signals[::-1],
        "files": {
            "torn_json_reads": reader.torn_reads(),
            "ledger_bad_lines": ledger.bad_lines,
            "egress_bad_lines": egress.bad_lines,
        },
    }


def _chain_ok(entries: list[dict[str, Any]]) -> bool | None:
    """Whether the complete lines read so far form an unbroken hash chain (None: no lines)."""
    if not entries:
        return None
    from fedpriv.errors import VerificationError
    from fedpriv.privacy.ledger import verify_chain

    try:
        verify_chain(list(entries))
    except VerificationError:
        return False
    return True
