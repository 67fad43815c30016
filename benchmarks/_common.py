"""Shared helpers for the benchmark scripts: machine description, tables, JSON, memory probes.

Timings on a shared 2-core machine are noisy: every script measures a baseline in the same
process, interleaves repetitions and reports medians and ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# FEDPRIV_BENCH_RESULTS redirects the result files (the smoke test writes to a temp folder).
RESULTS = Path(
    os.environ.get("FEDPRIV_BENCH_RESULTS") or Path(__file__).resolve().parent / "results"
)
# Read-only shared data (MNIST): FEDPRIV_SHARED_DATA, else ../shared/data beside the repository.
SHARED_DATA = Path(os.environ.get("FEDPRIV_SHARED_DATA") or ROOT.parent / "shared" / "data")
SHARED_MNIST = SHARED_DATA / "mnist"
MIB = 1024 * 1024
_LOAD_AT_IMPORT = list(os.getloadavg())

__all__ = [
    "MIB",
    "RESULTS",
    "ROOT",
    "SHARED_DATA",
    "SHARED_MNIST",
    "MemorySampler",
    "fmt",
    "hwm_bytes",
    "machine_info",
    "median",
    "print_table",
    "read_json",
    "rss_bytes",
    "run_worker",
    "timed",
    "tree_memory",
    "write_json",
]


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _version(pkg: str) -> str:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (goes into every JSON file)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "mem_total_gib": round(_mem_total() / 2**30, 1),
        "gpu": "none",
        "python": platform.python_version(),
        "platform": platform.platform(),
        # 1/5/15-minute load averages: other work on this shared 2-core machine inflates timings.
        "loadavg_at_start": _LOAD_AT_IMPORT,
        "loadavg_at_end": list(os.getloadavg()),
        "git_commit": commit,
        "versions": {
            p: _version(p)
            for p in ("torch", "opacus", "tenseal", "flwr", "ray", "numpy", "fedpriv")
        },
    }


def median(xs: Iterable[float]) -> float:
    v = list(xs)
    return statistics.median(v) if v else float("nan")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Run ``fn`` once; return (wall seconds, process CPU seconds, result)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def fmt(v: Any, digits: int = 3) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if v == 0:
            return "0"
        if abs(v) >= 1e5 or abs(v) < 1e-3:
            return f"{v:.{digits}g}"
        return f"{v:.{digits}g}" if abs(v) < 10 else f"{v:,.{max(0, digits - 2)}f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Print (and return) a Markdown table, ready to paste into docs/benchmarks.md."""
    cells = [[fmt(c) for c in r] for r in rows]
    lines = [f"### {title}", "", "| " + " | ".join(headers) + " |"]
    lines.append("| " + " | ".join("---" for _ in headers) + " |")
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def read_json(name: str) -> dict[str, Any]:
    """A previous result file (for scripts that update part of it), or {}."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return {}
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {
        "benchmark": name,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {path}", flush=True)
    return path


# ----------------------------------------------------------------------------- memory probes
def _status_kib(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def rss_bytes() -> int:
    """Current resident set size of this process."""
    return _status_kib("self", "VmRSS") * 1024


def hwm_bytes() -> int:
    """Peak resident set size of this process so far (same as ``ru_maxrss``)."""
    return _status_kib("self", "VmHWM") * 1024


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(d))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def tree_memory(root: int | None = None, pss: bool = True) -> tuple[int, int, int]:
    """(sum of RSS, sum of PSS, number of processes) over ``root`` and all its descendants.

    RSS counts shared pages (torch's libraries) once per process, so its sum overstates the
    footprint; PSS splits shared pages between the processes that map them.
    """
    pids = _descendants(os.getpid() if root is None else root)
    rss = sum(_status_kib(p, "VmRSS") for p in pids) * 1024
    p = sum(_pss_kib(x) for x in pids) * 1024 if pss else 0
    return rss, p, len(pids)


class MemorySampler:
    """Samples :func:`tree_memory` of this process tree in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.5, root: int | None = None) -> None:
        self.interval = interval
        self.root = os.getpid() if root is None else root
        self.peak_rss = 0
        self.peak_pss = 0
        self.peak_procs = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss, pss, n = tree_memory(self.root)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_procs = max(self.peak_procs, n)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_worker(module: str, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m module --worker args...`` in a fresh process; parse its last stdout line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {module} {' '.join(args)} failed (exit {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result
