"""Render the tables of docs/benchmarks.md and the target summary from ``benchmarks/results``.

``python -m benchmarks.tables`` prints every table and writes ``benchmarks/results/targets.json``
(one object per target of the performance issue: name, goal, measured, unit, met), computed
from the result files alone; ``--fill PATH`` also replaces the placeholders (``HE_TABLE``,
``DP_TABLE``, ...) on their own lines in a Markdown file.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import MIB, RESULTS, fmt, median

SHORT = {
    "plaintext (encryption off)": "plaintext",
    "fedpriv BFV (default)": "fedpriv BFV (default)",
    "fedpriv CKKS = TenSEAL tutorial N=8192 [60,40,40,60] 2^40": "fedpriv CKKS (= TenSEAL tutorial)",
    "CKKS N=8192 [60,40,40] 2^40 (NVFlare)": "CKKS [60,40,40] 2^40 (NVFlare)",
}


def _md(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    out += ["| " + " | ".join(c if isinstance(c, str) else fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def _load(name: str) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _load_note(doc: dict[str, Any]) -> str:
    m = doc.get("machine", {})
    a = m.get("loadavg_at_start", [float("nan")])[0]
    note = f"_Run {doc.get('when', '?')}, 1-minute load average {a:.1f} at start"
    if "loadavg_at_end" in m:
        note += f", {m['loadavg_at_end'][0]:.1f} at end"
    return note + "._"


ROUND_ORDER = (
    "DP + BFV (default)",
    "DP, no encryption",
    "BFV, no DP",
    "neither (plaintext FedAvg)",
    "DP + CKKS",
)
DP_ORDER = ("cnn 8x8 (default)", "wide 8x8", "cnn 28x28")


def _ordered(d: dict[str, Any], order: Sequence[str]) -> list[tuple[str, Any]]:
    return [(k, d[k]) for k in order if k in d] + [(k, v) for k, v in d.items() if k not in order]


def he_table() -> str:
    d = _load("he")
    rows = [
        [
            SHORT.get(c["setup"], c["setup"]),
            c["params"],
            f"{c['num_values']:,}",
            str(c["clients"]),
            f"{c['upload_x_float32']:.3f}",
            f"{c['download_x_float32']:.3f}",
            f"{c['encrypt_values_per_cpu_s'] / 1e6:.2f}",
            f"{c['encrypt_values_per_s'] / 1e6:.2f}",
            f"{c['aggregate_cpu_s_per_update'] * 1e3:.1f}",
            f"{c['aggregate_s_per_update'] * 1e3:.1f}",
            f"{c['decrypt_s'] * 1e3:.0f}",
            f"{c['max_abs_error']:.1e}",
            f"{c['error_bound']:.1e}" if c["scheme"] != "off" else "-",
            f"{c['server_peak_mib']:.0f}",
        ]
        for c in d.get("cases", [])
    ]
    table = _md(
        [
            "setup",
            "parameters",
            "values",
            "clients",
            "upload x f32",
            "download x f32",
            "encrypt M val/CPU-s",
            "encrypt M val/s wall",
            "server CPU ms/update",
            "server wall ms/update",
            "decrypt ms",
            "max error",
            "error bound",
            "server peak MiB",
        ],
        rows,
    )
    return table + "\n\n" + _load_note(d)


def stream_table() -> str:
    d = _load("he")
    cases = d.get("cases", [])
    rows = []
    for s in d.get("streaming", []):
        by_k = {
            c["clients"]: c
            for c in cases
            if c["setup"] == s["setup"] and c["num_values"] == s["num_values"]
        }
        rows.append(
            [
                SHORT.get(s["setup"], s["setup"]),
                f"{s['num_values']:,}",
                f"{by_k[10]['server_base_mib']:.0f}",
                f"{by_k[10]['server_peak_mib']:.0f}",
                f"{by_k[100]['server_peak_mib']:.0f}",
                f"{s['ratio_100_vs_10']:.2f}",
            ]
        )
    return _md(
        ["setup", "values", "process before MiB", "10 clients MiB", "100 clients MiB", "ratio"],
        rows,
    )


def default_table() -> str:
    d = _load("he")
    rows = [
        [
            x["label"],
            x["params"],
            str(x["ciphertexts"]),
            f"{x['upload_x_float32']:.3f}",
            f"{x['download_x_float32']:.3f}",
        ]
        for x in d.get("default_model", [])
    ]
    return _md(["ring degree", "parameters", "ciphertexts", "upload x f32", "download x f32"], rows)


def dp_table() -> str:
    d = _load("dp")
    rows = []
    for label, m in _ordered(d.get("models", {}), DP_ORDER):
        for mode in ("plain", "hooks", "functorch", "ew", "ghost"):
            mem = m["memory"].get(mode, {})
            diff = m["correctness_max_abs_diff"].get(mode)
            empty = m["empty_batch"].get(mode, "")
            rows.append(
                [
                    f"{label} ({m['params']:,})",
                    mode + (" (auto)" if mode == m["auto_mode"] else ""),
                    f"{m['median_sec_per_step'][mode] * 1e3:.2f}",
                    f"{m['ratio_to_plain'][mode]:.2f}",
                    f"{(mem['hwm_after'] - mem['hwm_before']) / MIB:.0f}" if mem else "-",
                    f"{mem['hwm_after'] / MIB:.0f}" if mem else "-",
                    "reference" if diff is None else f"{diff:.0e}",
                    "-" if mode == "plain" else ("ok" if empty == "ok" else "crashes"),
                ]
            )
    return (
        _md(
            [
                "model (parameters)",
                "mode",
                "ms/step",
                "x plain",
                "training MiB",
                "peak RSS MiB",
                "max diff vs loop",
                "empty batch",
            ],
            rows,
        )
        + "\n\n"
        + _load_note(d)
    )


PHASES = (
    "local training",
    "DP accounting",
    "quantize+encrypt",
    "serialization",
    "transfer",
    "server aggregation",
    "decrypt",
    "evaluation",
    "other",
)


def round_table() -> str:
    d = _load("round")
    rows = []
    for name, ph in _ordered(d.get("steady_state_s", {}), ROUND_ORDER):
        runs = d["runs"][name]
        up = median(r["bytes_up"] for run in runs for r in run["rounds"] if r["round"] >= 2)
        rows.append(
            [
                name,
                *(f"{ph[p] * 1e3:,.0f}" for p in PHASES),
                f"{ph['round'] * 1e3:,.0f}",
                f"{d['round1_s'][name]['round'] * 1e3:,.0f}",
                f"{up / 1024:.0f}",
            ]
        )
    return _md(["setting", *PHASES, "round", "round 1", "KiB up"], rows) + "\n\n" + _load_note(d)


def share_table() -> str:
    d = _load("round")
    st = d.get("steady_state_s", {})
    if not st:
        return ""
    he = ("quantize+encrypt", "serialization", "transfer", "server aggregation", "decrypt")
    dp_he, dp_only = st["DP + BFV (default)"], st["DP, no encryption"]
    he_only, base = st["BFV, no DP"], st["neither (plaintext FedAvg)"]
    rows = []
    for label, a, b in (
        ("DP on: DP+BFV vs DP only", dp_he, dp_only),
        ("DP off: BFV only vs plaintext", he_only, base),
    ):
        added = sum(a[p] - b[p] for p in he)
        parts = ", ".join(f"{p} {(a[p] - b[p]) * 1e3:+.0f}" for p in he)
        rows.append([label, f"{added * 1e3:.0f}", f"{added / a['round']:.1%}", parts])
    return _md(["", "ms added", "share of the round", "by phase (ms)"], rows)


def ratio_table() -> str:
    d = _load("round")
    st = d.get("steady_state_s", {})
    if not st:
        return ""
    base = st["neither (plaintext FedAvg)"]["round"]
    rows = []
    for name, ph in _ordered(st, ROUND_ORDER):
        no_acc = ph["round"] - ph["DP accounting"]
        rows.append(
            [
                name,
                f"{ph['round'] * 1e3:,.0f}",
                f"{ph['round'] / base:.2f}",
                f"{no_acc / base:.2f}",
                f"{ph['local training'] / st['neither (plaintext FedAvg)']['local training']:.2f}",
            ]
        )
    return _md(
        [
            "setting",
            "round ms",
            "x plaintext",
            "x plaintext without accounting",
            "training x plain",
        ],
        rows,
    )


def sim_table() -> str:
    d = _load("round")
    sim = {k: v for k, v in d.get("simulation", {}).items() if isinstance(v, dict)}
    ok = {k: v for k, v in sim.items() if "error" not in v}
    base = ok.get("neither (plaintext FedAvg)")
    if not base:
        return "(not run)"
    b = median(base["round_seconds"][1:])
    rows = []
    for name, s in _ordered(ok, ROUND_ORDER):
        r = median(s["round_seconds"][1:])
        rows.append(
            [
                name,
                f"{s['round_seconds'][0]:.1f}",
                f"{r:.2f}",
                f"{r / b:.2f}",
                f"{s['wall_s']:.0f}",
            ]
        )
    return _md(["setting", "round 1 s", "later rounds s", "x plaintext", "whole run s"], rows)


def scale_table() -> str:
    d = _load("scale")
    rows = []
    for name, r in d.get("runs", {}).items():
        n = int(next(o for o in r["overrides"] if "num_clients" in o).split("=")[1])
        rs = [s for s in r["round_seconds"] if s is not None]
        later = median(rs[1:]) if len(rs) > 1 else float("nan")
        rows.append(
            [
                name,
                f"{r['wall_s']:.0f}",
                f"{rs[0]:.0f}",
                fmt(later) if later == later else "-",
                f"{len(rs) / (r['wall_s'] / 60):.2f}",
                f"{r['peak_pss_sum'] / 2**30:.2f}",
                f"{r['peak_rss_sum'] / 2**30:.2f}",
                f"{r['peak_pss_sum'] / n / MIB:.2f}",
                str(r["peak_processes"]),
            ]
        )
    return (
        _md(
            [
                "run",
                "wall s",
                "round 1 s",
                "later rounds s",
                "rounds/min",
                "peak PSS GiB",
                "peak RSS-sum GiB",
                "PSS MiB/client",
                "processes",
            ],
            rows,
        )
        + "\n\n"
        + _load_note(d)
    )


def edge_table() -> str:
    d = _load("edge")
    rows = []
    for name, r in d.get("results", {}).items():
        rows.append(
            [
                name,
                f"{r['import_rss'] / MIB:.0f}",
                f"{r['data_rss'] / MIB:.0f}" if "data_rss" in r else "-",
                f"{r['peak_hwm'] / MIB:.0f}",
                f"{r['peak_hwm'] / 1e6:.0f}",
                f"{r['round_cpu_s'][0]:.2f}",
                f"{r['round_cpu_s'][1]:.2f}",
                f"{r['bytes_up'][1] / 1024:.0f}",
                f"{r['bytes_down'][1] / 1024:.0f}",
            ]
        )
    return (
        _md(
            [
                "setting",
                "RSS after imports MiB",
                "after data libs MiB",
                "peak RSS MiB",
                "peak RSS MB",
                "CPU s round 1",
                "CPU s round 2",
                "KiB up/round",
                "KiB down/round",
            ],
            rows,
        )
        + "\n\n"
        + _load_note(d)
    )


# --------------------------------------------------------------------------- targets
def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and v == v else None


def _target(
    name: str, goal: Any, measured: Any, unit: str, met: bool | None = None
) -> dict[str, Any]:
    """One target; ``goal`` and ``measured`` are numbers or dicts with the same keys (upper
    bounds), ``met`` computed from them unless given."""
    if met is None:
        if isinstance(goal, dict):
            met = isinstance(measured, dict) and all(
                _num(measured.get(k)) is not None and measured[k] <= g for k, g in goal.items()
            )
        else:
            met = _num(measured) is not None and measured <= goal
    return {"name": name, "goal": goal, "measured": measured, "unit": unit, "met": bool(met)}


def targets() -> list[dict[str, Any]]:
    """The targets of the performance round, each from its result file (None: not measured)."""
    out = []
    rnd = _load("round").get("targets", {})
    out.append(
        _target(
            "dp_round",
            {"in_process": 2.0, "ray": 2.0},
            {"in_process": rnd.get("privacy_overhead_x"), "ray": rnd.get("privacy_overhead_ray_x")},
            "x plaintext non-private round",
        )
    )
    dp = _load("dp").get("target", {})
    out.append(_target("dp_step", 1.6, dp.get("measured"), "x plain SGD step"))
    edge = _load("edge")
    e = edge.get("target", {})
    loaded = edge.get("results", {}).get("DP + BFV (default)", {}).get("forbidden_loaded", [])
    out.append(
        _target(
            "edge",
            400,
            e.get("peak_mb"),
            "MB peak RSS (one device round)",
            met=_num(e.get("peak_mb")) is not None and e["peak_mb"] <= 400 and not loaded,
        )
    )
    he = _load("he")
    ht = he.get("targets", {})
    out.append(
        _target(
            "upload_100",
            {"upload": 1.25, "download": 2.5},
            {"upload": ht.get("upload_max_100"), "download": ht.get("download_max_100")},
            "x float32 bytes (100 clients per round)",
        )
    )
    th = {c["clients"]: c for c in he.get("threshold", []) if c.get("num_values") == 6090}
    out.append(
        _target(
            "threshold_upload",
            {
                "upload_10_clients": 5.0,
                "upload_100_clients": 5.0,
                "partial_10_clients": 3.0,
                "partial_100_clients": 3.0,
            },
            {
                "upload_10_clients": th.get(10, {}).get("upload_x_float32"),
                "upload_100_clients": th.get(100, {}).get("upload_x_float32"),
                "partial_10_clients": th.get(10, {}).get("partial_x_float32"),
                "partial_100_clients": th.get(100, {}).get("partial_x_float32"),
            },
            "x float32 bytes (default model; per client)",
        )
    )
    dist = _load("distributed_round").get("target", {})
    out.append(
        _target("distributed_round", 1.5, dist.get("measured_s"), "s wall per round (Ray, 2 cores)")
    )
    sc = _load("scale").get("targets", {})
    out.append(
        _target(
            "scale_60k",
            {"round_s": 30.0, "peak_gib": 8.0, "memory_1000_vs_100": 1.1},
            {
                "round_s": sc.get("60k_round_s"),
                "peak_gib": sc.get("60k_peak_pss_gib"),
                "memory_1000_vs_100": sc.get("60k_memory_1000_vs_100"),
            },
            "s per round; GiB (sum of PSS, process tree); ratio",
        )
    )
    return out


def targets_table() -> str:
    def show(v: Any) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k} {show(x)}" for k, x in v.items())
        return (
            "not measured"
            if v is None
            else fmt(float(v))
            if isinstance(v, (int, float))
            else str(v)
        )

    return _md(
        ["target", "goal (at most)", "measured", "unit", "met"],
        [
            [
                t["name"],
                show(t["goal"]),
                show(t["measured"]),
                t["unit"],
                "yes" if t["met"] else "NO",
            ]
            for t in targets()
        ],
    )


TABLES: dict[str, Callable[[], str]] = {
    "HE_TABLE": he_table,
    "STREAM_TABLE": stream_table,
    "DEFAULT_TABLE": default_table,
    "DP_TABLE": dp_table,
    "ROUND_TABLE": round_table,
    "SHARE_TABLE": share_table,
    "RATIO_TABLE": ratio_table,
    "SIM_TABLE": sim_table,
    "SCALE_TABLE": scale_table,
    "EDGE_TABLE": edge_table,
    "TARGETS_TABLE": targets_table,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fill", type=Path, help="Markdown file whose placeholder lines to replace")
    a = ap.parse_args()
    path = RESULTS / "targets.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(targets(), indent=2) + "\n")
    print(f"wrote {path}")
    if a.fill is None:
        for key, fn in TABLES.items():
            try:
                print(f"{key}\n\n{fn()}\n")
            except (KeyError, TypeError, ValueError) as e:  # a result file of another layout
                print(f"{key}\n\n(cannot render: {type(e).__name__}: {e})\n")
        return
    lines = a.fill.read_text().splitlines()
    out = [TABLES[ln.strip()]() if ln.strip() in TABLES else ln for ln in lines]
    a.fill.write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
