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

A top-level ``dataset = "mnist-5k"`` labels the rows of the results table. Three keys of a
settings table are not config keys: ``runner = "central"`` trains central DP-SGD on the union of
the clients' data (:func:`fedpriv.experiments.central.run_central`) instead of a federated
simulation, and ``seeds`` / ``splits`` (lists) restrict that setting to some seeds or splits.
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

__all__ = [
    "SweepRun",
    "load_sweep",
    "results_json",
    "run_sweep",
    "summarize_sweep",
    "write_results",
]


RUNNERS = ("federated", "central")
_RESERVED = ("runner", "seeds", "splits")


@dataclass(frozen=True)
class SweepRun:
    setting: str
    split: str
    seed: int
    config: RunConfig
    runner: str = "federated"
    dataset: str = ""

    def folder(self, out: Path) -> Path:
        return out / self.setting / self.split / f"seed{self.seed}"


def _override_list(table: Any, where: str) -> list[str]:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table of 'section.key' = value")
    out = []
    for k, v in table.items():
        if k in _RESERVED:
            continue
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
    unknown = set(doc) - {"base", "seeds", "splits", "settings", "name", "dataset"}
    if unknown:
        errors.append(f"{path}: unknown keys {sorted(unknown)}")
    label = str(doc.get("dataset", doc.get("name", path.stem)))
    runs: list[SweepRun] = []
    # Seed-major order: an interrupted sweep has every setting at some seeds, not some settings
    # at every seed.
    for seed in seeds:
        for pname, ptable in splits.items():
            for sname, stable in settings.items():
                runner = stable.get("runner", "federated") if isinstance(stable, dict) else ""
                if runner not in RUNNERS:
                    errors.append(f"settings.{sname}.runner: one of {', '.join(RUNNERS)}")
                    continue
                only_seeds = stable.get("seeds", seeds)
                only_splits = stable.get("splits", list(splits))
                if seed not in only_seeds or pname not in only_splits:
                    continue
                try:
                    over = [
                        *_override_list(ptable, f"splits.{pname}"),
                        *_override_list(stable, f"settings.{sname}"),
                        f"seed={seed}",
                        f'name="{sname}-{pname}-s{seed}"',
                        *(extra or []),
                    ]
                    cfg = config_from_dict(apply_overrides(base_raw, over))
                    runs.append(SweepRun(sname, pname, seed, cfg, runner, label))
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
    from fedpriv.experiments.central import run_central
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
            if r.runner == "central":
                acc: float | None = run_central(r.config, out=folder).accuracy
            else:
                acc = simulate(r.config, folder).final_accuracy
        except FedprivError as exc:
            counts["failed"] += 1
            log(f"{tag}: FAILED ({exc})")
            continue
        (folder / "DONE").write_text(
            json.dumps({"accuracy": acc, "seconds": time.perf_counter() - t0})
        )
        counts["done"] += 1
        shown = f"{acc:.4f}" if acc is not None else "n/a"
        log(f"{tag}: accuracy {shown} in {time.perf_counter() - t0:.0f}s")
    return counts


def _run_summary(folder: Path) -> dict[str, Any] | None:
    if not (folder / "DONE").exists():
        return None
    m = json.loads((folder / "metrics.json").read_text())
    rounds = m.get("rounds", [])
    eps = [c.get("epsilon") or 0.0 for r in rounds for c in r["clients"].values()]
    ceps = [c.get("client_epsilon") or 0.0 for r in rounds for c in r["clients"].values()]
    curve = [
        (r["round"], r["heldout_accuracy"]) for r in rounds if r.get("heldout_accuracy") is not None
    ]
    return {
        "accuracy": curve[-1][1] if curve else None,
        "curve": curve,
        "record_epsilon": float(m["epsilon"]) if "epsilon" in m else max(eps, default=0.0),
        "client_epsilon": max(ceps, default=0.0),
        "encryption": m.get("encryption"),
        "privacy_mode": m.get("privacy_mode"),
        "seconds": float(m.get("wall_seconds") or (m.get("central") or {}).get("seconds") or 0.0),
        "rounds": len(rounds),
    }


def _target_epsilon(r: SweepRun) -> float | None:
    p = r.config.privacy
    if p.mode == "off":
        return None
    if p.mode == "client":
        return p.client_target_epsilon
    return p.target_epsilon


def summarize_sweep(runs: list[SweepRun], out: Path) -> list[dict[str, Any]]:
    """Mean/std accuracy and epsilon per (dataset, setting, split) over the finished seeds."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    first: dict[tuple[str, str, str], SweepRun] = {}
    for r in runs:
        key = (r.dataset, r.setting, r.split)
        if key not in groups:
            groups[key], first[key] = [], r
        s = _run_summary(r.folder(out))
        if s is not None and s["accuracy"] is not None:
            groups[key].append(s)
    rows = []
    for key, g in groups.items():
        r0 = first[key]
        accs = [x["accuracy"] for x in g]
        central = r0.runner == "central"
        mode = (
            ("central" if r0.config.privacy.mode != "off" else "off")
            if central
            else (r0.config.privacy.mode)
        )
        rows.append(
            {
                "dataset": key[0],
                "setting": key[1],
                "split": key[2],
                "num_clients": r0.config.federation.num_clients,
                "seeds": len(g),
                "seeds_planned": sum(1 for r in runs if (r.dataset, r.setting, r.split) == key),
                "mean": statistics.fmean(accs) if accs else math.nan,
                "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "target_epsilon": _target_epsilon(r0),
                "record_epsilon": max((x["record_epsilon"] for x in g), default=0.0),
                "client_epsilon": max((x["client_epsilon"] for x in g), default=0.0),
                "privacy_mode": mode,
                "encryption": "off" if central else r0.config.encryption.scheme,
                "runner": r0.runner,
                "rounds": r0.config.rounds,
                "seconds_mean": statistics.fmean(x["seconds"] for x in g) if g else None,
                "curves": [x["curve"] for x in g],
            }
        )
    return rows


def results_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The machine-readable rows: one object per (dataset, setting, split) with finished seeds."""
    return [
        {
            "dataset": r["dataset"],
            "setting": r["setting"],
            "split": r["split"],
            "num_clients": r["num_clients"],
            "privacy_mode": r["privacy_mode"],
            "target_epsilon": r["target_epsilon"],
            "encryption": r["encryption"],
            "seeds": r["seeds"],
            "accuracy_mean": r["mean"],
            "accuracy_std": r["std"],
        }
        for r in rows
        if r["seeds"]
    ]


ANCHORS = [
    ("Abadi et al. 2016, DP-SGD, MNIST (60k, central)", "0.5 / 2 / 8", "90% / 95% / 97%"),
    ("Tramer & Boneh 2021, CNN end to end, MNIST (60k, central)", "3", "98.1%"),
    ("Tramer & Boneh 2021, ScatterNet + linear, MNIST (60k, central)", "3", "98.7%"),
]


_MODES = (
    ("record", "o", "local record-level DP"),
    ("distributed", "D", "distributed DP"),
    ("central", "s", "central DP-SGD"),
    ("client", "^", "client-level DP"),
    ("both", "v", "record + client"),
)


def _epsilon_of(r: dict[str, Any]) -> float:
    if r["privacy_mode"] == "client":
        return float(r["client_epsilon"] or r["target_epsilon"] or 0.0)
    return float(r["record_epsilon"] or r["target_epsilon"] or 0.0)


def write_results(
    rows: list[dict[str, Any]],
    docs: Path,
    *,
    title: str,
    notes: str = "",
    json_name: str | None = "results.json",
) -> Path:
    """Write ``docs/results.md`` (table, anchors, two PNG plots) and ``docs/results.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs.mkdir(parents=True, exist_ok=True)
    # One panel per (dataset, split) with finished runs, two per row.
    panels = sorted({(r.get("dataset", ""), r["split"]) for r in rows if r["seeds"]}) or [("", "")]
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)

    def grid() -> tuple[Any, list[Any]]:
        fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False)
        flat = list(axes.flat)
        for extra in flat[len(panels) :]:
            extra.set_visible(False)
        return fig, flat

    fig, axes_list = grid()
    for ax, (ds, split) in zip(axes_list, panels, strict=False):
        here = [r for r in rows if (r.get("dataset", ""), r["split"]) == (ds, split) and r["seeds"]]
        for mode, marker, label in _MODES:
            # One line per mode and client count (e.g. client-level DP over 1,000 clients).
            for k in sorted({r.get("num_clients", 0) for r in here if r["privacy_mode"] == mode}):
                pts = [
                    r
                    for r in here
                    if r["privacy_mode"] == mode
                    and r.get("num_clients", 0) == k
                    and (r["encryption"] != "off" or mode == "central")
                ]
                if not pts:
                    continue
                pts.sort(key=_epsilon_of)
                ax.errorbar(
                    [_epsilon_of(r) for r in pts],
                    [100 * r["mean"] for r in pts],
                    yerr=[100 * r["std"] for r in pts],
                    marker=marker,
                    capsize=3,
                    label=f"{label} ({k} clients)" if mode != "central" else label,
                )
        base = [r for r in here if r["privacy_mode"] == "off"]
        if base:
            ax.axhline(100 * base[0]["mean"], color="gray", ls="--", label="non-private")
        ax.set_xscale("log")
        ax.set_xlabel("epsilon (delta = 1e-5)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds} {split}".strip())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(docs / "results_accuracy_vs_epsilon.png", dpi=120)
    plt.close(fig)
    fig, axes_list = grid()
    for ax, (ds, split) in zip(axes_list, panels, strict=False):
        for r in rows:
            if (r.get("dataset", ""), r["split"]) != (ds, split) or not r["curves"]:
                continue
            if r["privacy_mode"] == "off" and r.get("runner") != "central":
                continue  # FedAvg rounds are not steps: kept out of this plot
            n = min(len(c) for c in r["curves"])
            xs = [r["curves"][0][i][0] for i in range(n)]
            mean = [100 * statistics.fmean(c[i][1] for c in r["curves"]) for i in range(n)]
            ax.plot(xs, mean, label=r["setting"])
        ax.set_xlabel("round (one DP-SGD step per round for distributed and central)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{ds} {split}".strip())
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(docs / "results_accuracy_vs_round.png", dpi=120)
    plt.close(fig)
    lines = [
        f"# {title}",
        "",
        notes,
        "",
        "| dataset | split | clients | setting | privacy | encryption | target eps | eps reached"
        " | seeds | accuracy (mean ± std) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = f"{100 * r['mean']:.2f} ± {100 * r['std']:.2f}" if r["seeds"] else "not run yet"
        planned = r.get("seeds_planned", r["seeds"])
        seeds = f"{r['seeds']}/{planned}" if planned != r["seeds"] else str(r["seeds"])
        tgt = r.get("target_epsilon")
        reached = _epsilon_of(r) if r["seeds"] and r["privacy_mode"] != "off" else None
        lines.append(
            f"| {r.get('dataset', '')} | {r['split']} | {r.get('num_clients', '')} |"
            f" {r['setting']} | {r['privacy_mode']} | {r['encryption']} |"
            f" {'' if tgt is None else f'{tgt:g}'} |"
            f" {'' if reached is None else f'{reached:.2f}'} | {seeds} | {acc} |"
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
    if json_name:
        (docs / json_name).write_text(
            json.dumps(results_json(rows), indent=2) + "\n", encoding="utf-8"
        )
    return path
