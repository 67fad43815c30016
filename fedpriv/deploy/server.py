"""``fedpriv server start``: a ``flower-superlink`` with TLS and SuperNode authentication.

The server host holds only the server bundle (public HE parameters, its TLS key, the nodes'
public keys, sealed keys it cannot open) and a state folder::

    STATE/
      flwr-home/       private FLWR_HOME: the ``flwr`` CLI connection (TLS, bundle CA)
      logs/superlink.log
      nodes.json       client id -> node id, as registered (``fedpriv run`` reads it)
      superlink.json   address, pid, bundle, federation of the running SuperLink
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from fedpriv.deploy.bundle import VerifiedBundle, check_pin, verify_bundle
from fedpriv.deploy.pki import verify_server_cert
from fedpriv.deploy.processes import (
    ManagedProcess,
    flower_exe,
    parse_address,
    wait_for_port,
)
from fedpriv.errors import CryptoError, FedprivError, RunFailedError
from fedpriv.fileio import atomic_write_text, fedpriv_home
from fedpriv.runs.flwr_cli import FlwrCli

__all__ = [
    "DEFAULT_ADDRESS",
    "ServerState",
    "default_server_state",
    "register_nodes",
    "start_superlink",
]

log = logging.getLogger("fedpriv.deploy.server")
DEFAULT_ADDRESS = "127.0.0.1:9092"
_ANY = {"0.0.0.0", "::", ""}


def default_server_state(bundle: VerifiedBundle) -> Path:
    """Default server state folder for a federation: ``$FEDPRIV_HOME/server-<federation>``."""
    return fedpriv_home() / f"server-{bundle.federation[:16]}"


@dataclass
class ServerState:
    """Paths in a server state folder."""

    root: Path

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def nodes(self) -> Path:
        return self.root / "nodes.json"

    @property
    def info(self) -> Path:
        return self.root / "superlink.json"

    @property
    def log(self) -> Path:
        return self.root / "logs" / "superlink.log"

    def read_nodes(self) -> dict[str, int]:
        """Registered node ids (empty when the server has not registered any)."""
        try:
            doc = json.loads(self.nodes.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RunFailedError(f"{self.nodes} is corrupt: {exc}") from None
        return {str(k): int(v) for k, v in doc.get("nodes", {}).items()}


def _cli_address(host: str, port: int) -> str:
    h = "127.0.0.1" if host in _ANY else host
    return f"[{h}]:{port}" if ":" in h else f"{h}:{port}"


def register_nodes(
    bundle: VerifiedBundle, cli: FlwrCli, state: ServerState, *, only_new: bool = False
) -> dict[str, int]:
    """Register every node public key of the server bundle; record client id -> node id.

    Parameters
    ----------
    only_new : bool
        Skip client ids already in ``nodes.json`` (``fedpriv server register`` after
        ``fedpriv keys add-node``).
    """
    known = state.read_nodes() if only_new else {}
    out = dict(known)
    for rel in sorted(bundle.meta["files"]):
        if not (rel.startswith("nodes/") and rel.endswith(".pub")):
            continue
        cid = Path(rel).stem
        if cid in known:
            continue
        out[cid] = cli.register(bundle.path(rel))
    atomic_write_text(
        state.nodes,
        json.dumps({"federation": bundle.federation, "nodes": out}, indent=2, sort_keys=True),
        mode=0o600,
    )
    return out


def start_superlink(
    bundle_dir: Path,
    *,
    address: str = DEFAULT_ADDRESS,
    state_dir: Path | None = None,
    dealer_fingerprint: str | None = None,
    ready_timeout: float = 60.0,
) -> tuple[ManagedProcess, VerifiedBundle, ServerState, dict[str, int], FlwrCli]:
    """Verify the server bundle, start the SuperLink, register the nodes.

    Returns
    -------
    (process, bundle, state, nodes, cli)
        The caller owns the process and must :meth:`~ManagedProcess.stop` it.

    Raises
    ------
    CryptoError
        The bundle is tampered with, holds an HE secret, or its certificate is invalid.
    RunFailedError
        The SuperLink did not come up or node registration failed.
    """
    bundle = verify_bundle(bundle_dir, kind="server")
    for rel in bundle.meta["files"]:
        if Path(rel).name in ("secret.key", "he_secret.key"):
            raise CryptoError(
                f"server bundle {bundle.root} contains {rel}: the server must never hold the HE "
                "secret. Use the server/ folder `fedpriv keys init` wrote"
            )
    state = ServerState(
        (Path(state_dir) if state_dir else default_server_state(bundle)).expanduser().resolve()
    )
    state.root.mkdir(parents=True, exist_ok=True)
    state.root.chmod(0o700)
    check_pin(bundle, state.root, dealer_fingerprint)
    sans = verify_server_cert(
        bundle.path("ca.crt").read_bytes(), bundle.path("server.crt").read_bytes()
    )
    host, port = parse_address(address)
    if host not in _ANY and host not in sans:
        log.warning(
            "the server certificate is for %s, not %s: clients connecting to %s will fail TLS "
            "verification (deal keys with --server-host %s)",
            ", ".join(sans),
            host,
            host,
            host,
        )
    cli = FlwrCli(state.flwr_home, _cli_address(host, port), bundle.path("ca.crt"))
    argv = [
        flower_exe("flower-superlink"),
        "--ssl-certfile",
        str(bundle.path("server.crt")),
        "--ssl-keyfile",
        str(bundle.path("server.key")),
        "--ssl-ca-certfile",
        str(bundle.path("ca.crt")),
        "--enable-supernode-auth",
        "--isolation",
        "subprocess",
        "--disable-runtime-dependency-installation",
        "--host",
        host or "0.0.0.0",
        "--port",
        str(port),
    ]
    env = {**cli.env(), "PYTHONUNBUFFERED": "1"}
    proc = ManagedProcess("flower-superlink", argv, env=env, log_path=state.log, cwd=state.root)
    proc.start()
    try:
        if not wait_for_port(
            "127.0.0.1" if host in _ANY else host, port, ready_timeout, proc.alive
        ):
            raise RunFailedError(
                f"flower-superlink did not start on {address} (exit {proc.returncode()}); is the "
                f"port in use? Log {state.log}:\n{proc.log_tail(25)}"
            )
        deadline = time.monotonic() + ready_timeout
        while True:  # the port opens before the Control API answers
            try:
                cli.nodes()
                break
            except FedprivError:
                if time.monotonic() > deadline or not proc.alive():
                    raise
                time.sleep(0.5)
        nodes = register_nodes(bundle, cli, state)
        atomic_write_text(
            state.info,
            json.dumps(
                {
                    "address": address,
                    "pid": proc.pid,
                    "bundle": str(bundle.root),
                    "federation": bundle.federation,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            ),
            mode=0o600,
        )
    except BaseException:
        proc.stop()
        raise
    return proc, bundle, state, nodes, cli
