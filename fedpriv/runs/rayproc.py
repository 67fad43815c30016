"""The Ray processes of a simulation this process runs: their priority, and who they are."""

from __future__ import annotations

import os

__all__ = ["RAY_WORKER_NICENESS", "ray_descendants", "shutdown_ray"]

RAY_WORKER_NICENESS = ("RAY_worker_niceness", "0")
"""Ray starts its workers at nice 15 so a driver stays responsive; in a simulation the workers
(the virtual devices) are the work, and at nice 15 any other busy process on the machine starves
them: with three busy loops on 2 cores a 30-second test run did not finish round 1 in 5 minutes
(its actors got 3-4% CPU), and finished in 61 s at nice 0. Set only when unset (the user's value
wins) and only for a cluster this run starts (a ``ray_address`` cluster keeps its own)."""


def ray_descendants() -> list[int]:
    """This process' descendants that belong to the Ray instance a run started (its workers,
    raylet, GCS): nothing else a notebook may have started."""
    from fedpriv.deploy.processes import descendants

    pids = []
    for pid in descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if b"ray::" in cmd or b"/ray/" in cmd:
            pids.append(pid)
    return pids


def shutdown_ray() -> None:
    """``ray.shutdown()`` when this process has a Ray connection."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:  # pragma: no cover - ray is a hard dependency via flwr[simulation]
        pass
