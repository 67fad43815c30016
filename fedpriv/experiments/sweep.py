"""Sweeps: (setting x split x seed) grids of simulations, resumable, summarized into docs.

A sweep file (TOML) names a base experiment config and three tables of overrides::

    base = "base.toml"          # relative to the sweep file
    seeds = [0, 1, 2]
    [splits.iid]
    "data.partitioner" = "iid"
    [settings.record-eps3]
    "privacy.mode" = "record"
    "privacy.target_epsilon" = 3.0

Each combination runs once into ``OUT/<setting>/<split>/seed<k>/``; a ``DONE`` marker written
after success makes re-running the sweep skip finished runs (resumable).
"""

from __future__ import annotations

import json
import math
import statistics
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig, apply_overrides, config_from_dict
from fedpriv.errors import ConfigError, FedprivError

__all__ = ["SweepRun", "load_sweep", "run_sweep", "summarize_sweep", "write_results"]


@dataclass(frozen=True)
class SweepRun:
    setting: str
    split: str
    seed: int
    config: RunConfig

    def folder(self, out: Path) -> Path:
        return out / self.setting / self.split / f"seed{self.seed}"


def _override_list(table: Any, where: str) -> list[str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of 'section.key' = value")
    out = []
    for k, v in table.items():
        if isinstance(v, dict):
            raise ConfigError(f'{where}.{k}: use dotted keys, e.g. "privacy.mode" = "record"')
        out.append(f"{k}={json.dumps(v) if isinstance(v, str) else _toml_value(v)}")
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def load_sweep(path: Path, extra: list[str] | None = None) -> list[SweepRun]:
    """Expand a sweep file into validated run configs (every error reported at once)."""
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: sweep file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    errors: list[str] = []
    base_raw: dict[str, Any] = {}
    if "base" in doc:
        base_path = (path.parent / str(doc["base"])).resolve()
        try:
            base_raw = tomllib.loads(base_path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            errors.append(f"{path}: base config {base_path}: {exc}")
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        errors.append(f"{path}: seeds must be a list of integers")
        seeds = []
    splits = doc.get("splits", {"default": {}})
    settings = doc.get("settings", {})
    if not settings:
        errors.append(f"{path}: no [settings.*] tables")
    unknown = set(doc) - {"base", "seeds", "splits", "settings", "name"}
    if unknown:
        errors.append(f"{path}: unknown keys {sorted(unknown)}")
    runs: list[SweepRun] = []
    # Seed-major order: an interrupted sweep has every setting at some seeds, not some settings
    # at every seed.
    for seed in seeds:
        for pname, ptable in splits.items():
            for sname, stable in settings.items():
                try:
                    over = [
                        *_override_list(ptable, f"splits.{pname}"),
                        *_override_list(stable, f"settings.{sname}"),
                        f"seed={seed}",
                        f'name="{sname}-{pname}-s{seed}"',
                        *(extra or []),
                    ]
                    runs.append(
                        SweepRun(
                            sname, pname, seed, config_from_dict(apply_overrides(base_raw, over))
                        )
                    )
                except ConfigError as exc:
                    errors.extend(f"{sname}/{pname}/seed{seed}: {e}" for e in exc.errors)
    if errors:
        raise ConfigError(sorted(set(errors)))
    return runs


def run_sweep(
    runs: list[SweepRun],
    out: Path,
    *,
    only: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, int]:
    """Run every combination not yet DONE; a failing run is logged and the sweep goes on."""
    from fedpriv.simulation import simulate

    counts = {"done": 0, "skipped": 0, "failed": 0}
    for i, r in enumerate(runs, 1):
        folder = r.folder(out)
        tag = f"[{i}/{len(runs)}] {r.setting}/{r.split}/seed{r.seed}"
        if only and only not in f"{r.setting}/{r.split}/seed{r.seed}":
            continue
        if (folder / "DONE").exists():
            counts["skipped"] += 1
            continue
        if folder.exists():
            # An interrupted run: start it again from scratch (its partial output is not trusted).
            import shutil

            shutil.rmtree(folder)
        t0 = time.perf_counter()
        try:
            res = simulate(r.config, folder)
        except FedprivError as exc:
            counts["failed"] += 1
            log(f"{tag}: FAILED ({exc})")
            continue
        (folder / "DONE").write_text(
            json.dumps({"accuracy": res.final_accuracy, "seconds": time.perf_counter() - t0})
        )
        counts["done"] += 1
        log(f"{tag}: accuracy {res.final_accuracy:.4f} in {time.perf_counter() - t0:.0f}s")
    return counts


def _run_summary(folder: Path) -> dict[str, Any] | None:
    if not (folder / "DONE").exists():
        return None
    m = json.loads((folder / "metrics.json").read_text())
    rounds = m.get("rounds", [])
    eps = [c.get("epsilon") or 0.0 for r in rounds for c in r["clients"].values()]
    ceps = [c.get("client_epsilon") or 0.0 for r in rounds for c in r["clients"].values()]
    return {
        "accuracy": rounds[-1]["heldout_accuracy"] if rounds else None,
        "curve": [r["heldout_accuracy"] for r in rounds],
        "record_epsilon": max(eps) if eps else 0.0,
        "client_epsilon": max(ceps) if ceps else 0.0,
        "encryption": m.get("encryption"),
        "privacy_mode": m.get("privacy_mode"),
    }


def summarize_sweep(runs: list[SweepRun], out: Path) -> list[dict[str, Any]]:
    """Mean/std accuracy and epsilon per (setting, split) over the finished seeds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    order: list[tuple[str, str]] = []
    for r in runs:
        key = (r.setting, r.split)
        if key not in groups:
            groups[key] = []
            order.append(key)
        s = _run_summary(r.folder(out))
        if s is not None and s["accuracy"] is not None:
            groups[key].append(s)
    rows = []
    for key in order:
        g = groups[key]
        accs = [x["accuracy"] for x in g]
        rows.append(
            {
                "setting": key[0],
                "split": key[1],
                "seeds": len(g),
                "mean": statistics.fmean(accs) if accs else math.nan,
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "record_epsilon": max((x["record_epsilon"] for x in g), default=0.0),
                "client_epsilon": max((x["client_epsilon"] for x in g), default=0.0),
                "privacy_mode": g[0]["privacy_mode"] if g else "",
                "encryption": g[0]["encryption"] if g else "",
                "curves": [x["curve"] for x in g],
            }
        )
    return rows


ANCHORS = [
    ("Abadi et al. 2016, DP-SGD, MNIST (60k, central)", "0.5 / 2 / 8", "90% / 95% / 97%"),
    ("Tramer & Boneh 2021, CNN end to end, MNIST (60k, central)", "3", "98.1%"),
    ("Tramer & Boneh 2021, ScatterNet + linear, MNIST (60k, central)", "3", "98.7%"),
]


def write_results(rows: list[dict[str, Any]], docs: Path, *, title: str, notes: str = "") -> Path:
    """Write ``docs/results.md`` with the table, anchors and two PNG plots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    splits = sorted({r["split"] for r in rows})
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for mode, marker in (("record", "o"), ("client", "s"), ("both", "^")):
            pts = [
                r
                for r in rows
                if r["split"] == split
                and r["privacy_mode"] == mode
                and r["seeds"]
                and r["encryption"] != "off"
            ]
            if not pts:
                continue
            xs = [r["record_epsilon"] if mode != "client" else r["client_epsilon"] for r in pts]
            order = sorted(range(len(xs)), key=lambda i: xs[i])
            ax.errorbar(
                [xs[i] for i in order],
                [pts[i]["mean"] for i in order],
                yerr=[pts[i]["std"] for i in order],
                marker=marker,
                capsize=3,
                label=f"{mode}-level DP",
            )
        base = [
            r for r in rows if r["split"] == split and r["privacy_mode"] == "off" and r["seeds"]
        ]
        if base:
            ax.axhline(base[0]["mean"], color="gray", ls="--", label="non-private")
        ax.set_xlabel("epsilon (delta = 1e-5)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(split)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(docs / "results_accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4), squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        for r in rows:
            if r["split"] != split or not r["curves"]:
                continue
            n = min(len(c) for c in r["curves"])
            mean = [statistics.fmean(c[i] for c in r["curves"]) for i in range(n)]
            ax.plot(range(1, n + 1), mean, label=r["setting"])
        ax.set_xlabel("round")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(split)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "results_accuracy_vs_round.png", dpi=120)
    plt.close(fig)
    lines = [
        f"# {title}",
        "",
        notes,
        "",
        "| setting | split | privacy | encryption | record eps | client eps | seeds | accuracy (mean ± std) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if r["seeds"] else "not run yet"
        lines.append(
            f"| {r['setting']} | {r['split']} | {r['privacy_mode']} | {r['encryption']} | "
            f"{r['record_epsilon']:.2f} | {r['client_epsilon']:.2f} | {r['seeds']} | {acc} |"
        )
    lines += [
        "",
        "Published anchors (delta = 1e-5; central training on all 60k MNIST images):",
        "",
        "| source | epsilon | accuracy |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in ANCHORS]
    lines += [
        "",
        "![accuracy against epsilon](results_accuracy_vs_epsilon.png)",
        "",
        "![accuracy against round](results_accuracy_vs_round.png)",
        "",
    ]
    path = docs / "results.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
