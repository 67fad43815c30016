"""The ``flwr`` CLI, driven with a private ``FLWR_HOME``: deployments and local simulations.

The ``flwr`` CLI keeps its connections in ``$FLWR_HOME/config.toml``; :class:`FlwrCli` writes a
private ``FLWR_HOME`` with one connection, so fedpriv never touches the user's own ``~/.flwr``:

* ``FlwrCli(home, address, ca)``: a TLS connection to a deployment's SuperLink;
* ``FlwrCli.local(home)``: Flower's ``:local:`` connection (``flwr run`` starts a detached
  simulation SuperLink for it) on ports of its own, stopped by :meth:`FlwrCli.stop_local`.

``flwr run`` returns 0 as soon as the SuperLink accepted a run, even if the ServerApp fails
later: :func:`wait_for_run` polls ``flwr list --run-id ID --format json`` until the run is
``finished:*``, and only ``finished:completed`` counts as success. :func:`flwr_run_local` puts
it together for ``fedpriv simulate --engine flwr``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedpriv.deploy.processes import descendants, flower_exe, free_port
from fedpriv.errors import FedprivError, RunFailedError
from fedpriv.runs.flwr_config import FlowerRunConfig
from fedpriv.runs.rayproc import RAY_WORKER_NICENESS

__all__ = [
    "COMPLETED",
    "FlwrCli",
    "flwr_run_local",
    "run_failure",
    "stop_processes_matching",
    "wait_for_run",
]

log = logging.getLogger("fedpriv.runs")
COMPLETED = "finished:completed"


class FlwrCli:
    """The ``flwr`` CLI against one SuperLink, with a private ``FLWR_HOME``.

    Parameters
    ----------
    home : Path
        Private ``FLWR_HOME`` (created owner-only).
    address : str
        ``HOST:PORT`` of the SuperLink's Control API (``fedpriv server start`` serves it on
        loopback only, behind its proxy).
    root_certificates : Path
        The federation CA certificate (TLS is always on).
    token : str, optional
        The operator's Control API token. The ``flwr`` CLI sends it as ``Authorization: Bearer``
        on every Control API request: it is stored the way ``flwr login`` stores an account's
        access token (``FLWR_HOME/credentials.yaml``, owner-only), which the open-source
        SuperLink ignores and fedpriv's proxy checks (:mod:`fedpriv.deploy.proxy`).
    """

    CONNECTION = "fedpriv"

    def __init__(
        self, home: Path, address: str, root_certificates: Path, *, token: str | None = None
    ) -> None:
        self.home = home
        self.address = address
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        ca = str(Path(root_certificates).resolve())
        toml = (
            "# written by fedpriv: one TLS connection to the federation's SuperLink\n"
            "[superlink]\n"
            f'default = "{self.CONNECTION}"\n\n'
            f"[superlink.{self.CONNECTION}]\n"
            f"address = {json.dumps(address)}\n"
            f"root-certificates = {json.dumps(ca)}\n"
        )
        (home / "config.toml").write_text(toml, encoding="utf-8")
        if token is not None:
            _store_token(home, address, token)
        self._env_defaults: dict[str, str] = {}
        self._env_extra: dict[str, str] = {}

    @classmethod
    def local(cls, home: Path) -> FlwrCli:
        """Flower's ``:local:`` connection: ``flwr run`` starts a detached simulation SuperLink
        on first use, here on two free loopback ports (never the user's own local SuperLink);
        :meth:`stop_local` stops it."""
        self = cls.__new__(cls)
        self.home = home
        self.address = ":local:"
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o700)
        toml = (
            "# written by fedpriv: a private local simulation SuperLink\n"
            "[superlink]\n"
            f'default = "{cls.CONNECTION}"\n\n'
            f"[superlink.{cls.CONNECTION}]\n"
            'address = ":local:"\n'
        )
        (home / "config.toml").write_text(toml, encoding="utf-8")
        # The local SuperLink starts Ray: its workers are the virtual devices (unless the user
        # set a niceness, see fedpriv.runs.rayproc).
        self._env_defaults = dict([RAY_WORKER_NICENESS])
        self._env_extra = {
            "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
            "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
        }
        return self

    def env(self) -> dict[str, str]:
        """Environment for Flower commands."""
        return {
            **self._env_defaults,
            **os.environ,
            "FLWR_HOME": str(self.home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "COLUMNS": "200",
            "NO_COLOR": "1",
            **self._env_extra,
        }

    def call(
        self, args: Sequence[str], *, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flwr ARGS`` and return the completed process (never raises on exit status)."""
        try:
            return subprocess.run(
                [flower_exe("flwr"), *args],
                capture_output=True,
                text=True,
                env=self.env(),
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise RunFailedError(
                f"`flwr {' '.join(args[:2])}` did not answer within {timeout:.0f}s; is the "
                f"SuperLink at {self.address} running?"
            ) from None

    def json_call(self, args: Sequence[str], *, timeout: float = 60.0) -> dict[str, Any]:
        """Run a ``flwr ... --format json`` command and parse its output."""
        res = self.call([*args, "--format", "json"], timeout=timeout)
        doc = _last_json(res.stdout)
        if doc is None:
            raise RunFailedError(
                f"`flwr {' '.join(args[:2])}` failed (exit {res.returncode}): "
                + (res.stderr.strip() or res.stdout.strip())[-1500:]
            )
        return doc

    def register(self, public_key: Path) -> int:
        """``flwr supernode register``: return the node id the SuperLink assigned."""
        doc = self.json_call(["supernode", "register", str(public_key), self.CONNECTION])
        if not doc.get("success"):
            raise RunFailedError(
                f"registering {public_key.name} failed: {doc.get('error-message', doc)}"
            )
        return int(doc["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """``flwr supernode list``."""
        doc = self.json_call(["supernode", "list", self.CONNECTION])
        if not doc.get("success"):
            raise RunFailedError(f"listing nodes failed: {doc.get('error-message', doc)}")
        return list(doc.get("nodes", []))

    def submit(
        self,
        project: Path,
        run_config: Path,
        *,
        federation_config: Mapping[str, int | str] | None = None,
    ) -> int:
        """``flwr run PROJECT`` with a run-config TOML file; return the run id.

        ``federation_config`` sets simulation options (``{"num-supernodes": 10}``).
        """
        args = ["run", str(project), self.CONNECTION, "--run-config", str(run_config)]
        for k, v in (federation_config or {}).items():
            args += ["--federation-config", f"{k}={json.dumps(v)}"]
        doc = self.json_call(args, timeout=120.0)
        if not doc.get("success") or "run-id" not in doc:
            raise RunFailedError(f"`flwr run` was refused: {doc.get('error-message', doc)}")
        return int(doc["run-id"])

    def run_status(self, run_id: int) -> dict[str, Any]:
        """``flwr list --run-id``: the run's entry (``status`` like ``finished:completed``)."""
        doc = self.json_call(["list", self.CONNECTION, "--run-id", str(run_id)])
        runs = doc.get("runs") or []
        if not doc.get("success") or not runs:
            raise RunFailedError(f"run {run_id} not found: {doc.get('error-message', doc)}")
        return dict(runs[0])

    def stop_run(self, run_id: int, *, timeout: float = 30.0) -> None:
        """``flwr stop`` (best effort)."""
        with contextlib.suppress(FedprivError):
            self.call(["stop", str(run_id), self.CONNECTION], timeout=timeout)

    def stop_local(self, *, timeout: float = 10.0) -> list[int]:
        """Stop the local SuperLink ``flwr run`` started for this ``FLWR_HOME`` (its command
        line names a log file in it) and everything it started; return the pids signalled."""
        return stop_processes_matching(str(self.home), timeout=timeout)

    def logs(self, run_id: int) -> str:
        """``flwr log --show`` output (best effort)."""
        try:
            res = self.call(["log", str(run_id), self.CONNECTION, "--show"], timeout=30.0)
        except FedprivError as exc:
            return str(exc)
        return res.stdout + res.stderr


def _last_json(text: str) -> dict[str, Any] | None:
    """The JSON object printed last (Flower may print banners before it)."""
    start = text.find("{")
    while start != -1:
        try:
            doc = json.loads(text[start:])
        except ValueError:
            start = text.find("{", start + 1)
            continue
        return doc if isinstance(doc, dict) else None
    return None


def stop_processes_matching(marker: str, *, timeout: float = 10.0) -> list[int]:
    """Stop every process whose command line contains ``marker``, with all its descendants
    (SIGTERM, then SIGKILL after ``timeout``); return the pids signalled."""
    me = os.getpid()
    roots: list[int] = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == me:
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            roots.append(int(d.name))
    # Collect the whole trees first: children are orphaned once their parent is gone.
    victims = list(dict.fromkeys(p for r in roots for p in (r, *descendants(r)) if p != me))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in victims):
        time.sleep(0.1)
    for pid in victims:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    return victims


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def wait_for_run(
    cli: FlwrCli,
    run_id: int,
    *,
    timeout: float,
    poll: float = 2.0,
    on_poll: Callable[[], None] | None = None,
    stop_on_interrupt: bool = True,
) -> str:
    """Poll a run's status until it is ``finished:*``; return that status.

    On timeout the run is stopped and :class:`RunFailedError` raised; on Ctrl-C it is stopped
    (unless ``stop_on_interrupt`` is False: the caller stops the whole SuperLink) and the
    ``KeyboardInterrupt`` re-raised.
    """
    deadline = time.monotonic() + timeout
    status = ""
    try:
        while True:
            try:
                status = str(cli.run_status(run_id).get("status", ""))
            except RunFailedError as exc:  # transient: the SuperLink is busy starting the app
                log.debug("status poll failed: %s", exc)
            if on_poll is not None:
                on_poll()
            if status.startswith("finished"):
                return status
            if time.monotonic() > deadline:
                cli.stop_run(run_id)
                raise RunFailedError(
                    f"run {run_id} did not finish within {timeout:.0f}s (last status "
                    f"{status or '?'}); stopped it"
                )
            time.sleep(poll)
    except KeyboardInterrupt:
        if stop_on_interrupt:
            cli.stop_run(run_id, timeout=5.0)
        raise


def run_failure(
    cli: FlwrCli, run_id: int, status: str, what: str, reason: str = ""
) -> RunFailedError:
    """The error for a run that ended ``status``, with the tail of its ServerApp log."""
    tail = "\n".join(cli.logs(run_id).strip().splitlines()[-25:])
    return RunFailedError(
        f"{what} run {run_id} ended {status}"
        + (f": {reason}" if reason else "")
        + (f"\n--- ServerApp log (flwr log {run_id}) ---\n{tail}" if tail else "")
    )


def flwr_run_local(
    project_dir: Path,
    run_config: FlowerRunConfig,
    *,
    num_supernodes: int,
    client_cpus: int | None = None,
    timeout: float = 6 * 3600.0,
    poll: float = 2.0,
    on_poll: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """``flwr run`` a project on a private local simulation SuperLink; return the run's status.

    The SuperLink and everything it started are stopped before this returns, also on error or
    Ctrl-C.

    Raises
    ------
    RunFailedError
        The run did not end ``finished:completed`` (message with the ServerApp log tail).
    """
    home = Path(tempfile.mkdtemp(prefix="fedpriv-flwr-home-"))
    cli = FlwrCli.local(home)
    interrupted = False
    try:
        rc_path = run_config.write(home / "run-config.toml")
        fed: dict[str, int | str] = {"num-supernodes": num_supernodes}
        if client_cpus is not None:
            fed["client-resources-num-cpus"] = client_cpus
        run_id = cli.submit(project_dir, rc_path, federation_config=fed)
        try:
            status = wait_for_run(
                cli, run_id, timeout=timeout, poll=poll, on_poll=on_poll, stop_on_interrupt=False
            )
        except KeyboardInterrupt:
            interrupted = True
            raise
        entry = cli.run_status(run_id)
        if status != COMPLETED:
            details = str(entry.get("status-details", "") or "")[:2000]
            raise run_failure(cli, run_id, status, "simulation", details)
        return entry
    finally:
        cli.stop_local(timeout=3.0 if interrupted else 10.0)
        shutil.rmtree(home, ignore_errors=True)


def _store_token(home: Path, address: str, token: str) -> None:
    """Store ``token`` as the access token of ``address`` in Flower's credential store."""
    from flwr.cli.constant import (
        ACCESS_TOKEN_STORE_KEY,
        AUTHN_TYPE_STORE_KEY,
        REFRESH_TOKEN_STORE_KEY,
    )
    from flwr.common.constant import AuthnType
    from flwr.supercore.credential_store import FileCredentialStore

    store = FileCredentialStore(home / "credentials.yaml")
    # The OIDC type makes the CLI send the stored access token. It refreshes only after a 401
    # with `WWW-Authenticate: Bearer`, which neither the proxy (403) nor the SuperLink sends.
    store.set(AUTHN_TYPE_STORE_KEY % address, AuthnType.OIDC.encode())
    store.set(ACCESS_TOKEN_STORE_KEY % address, token.encode())
    store.set(REFRESH_TOKEN_STORE_KEY % address, b"unused")
