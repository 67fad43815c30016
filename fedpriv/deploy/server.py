"""``fedpriv server start``: the SuperLink behind a reverse proxy, with TLS and node authentication.

Three processes, started, watched and stopped together (:func:`start_server`):

* the SuperLink (Flower's ``flower-superlink`` app, :mod:`fedpriv.deploy.superlink_socket`) on a
  unix socket in the owner-only state folder, with TLS, SuperNode authentication and SuperExec
  authentication;
* nginx (:mod:`fedpriv.deploy.proxy`): the Fleet routes on the public ``--address``; the Control
  API (operator token) and the Runtime API on a loopback ``--control-address``;
* ``flower-superexec``, which starts the ServerApp of each run; it signs its ``acquire-task``
  calls with the SuperExec secret (``--superexec-auth-secret-file``).

The server host holds only the server bundle (public HE parameters, its TLS key, the nodes'
public keys, sealed keys it cannot open) and a state folder (owner-only)::

    STATE/
      control.token     the operator's Control API token (kept across restarts)
      superexec.secret  the SuperExec HMAC secret (new on each start)
      superlink.sock    the SuperLink (reachable by the operator's account only)
      flwr-home/        private FLWR_HOME: the ``flwr`` CLI connection (TLS, bundle CA, token)
      proxy/            nginx.conf, pid file, temporary folders
      logs/             superlink.log, proxy.log, proxy-refused.log, superexec.log
      nodes.json        client id -> node id, as registered (``fedpriv run`` reads it)
      superlink.json    addresses, pids, bundle, federation of the running server
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fedpriv.deploy.bundle import VerifiedBundle, check_pin, verify_bundle
from fedpriv.deploy.pki import verify_server_cert
from fedpriv.deploy.processes import (
    ManagedProcess,
    flower_exe,
    free_port,
    parse_address,
    wait_for_port,
    wait_for_unix_socket,
)
from fedpriv.deploy.proxy import (
    ProxyConfig,
    format_hostport,
    is_loopback,
    new_token,
    nginx_argv,
    nginx_exe,
    write_nginx_conf,
)
from fedpriv.errors import (
    ConfigError,
    CryptoError,
    FedprivError,
    RunFailedError,
    StateError,
)
from fedpriv.fileio import atomic_write_text, fedpriv_home
from fedpriv.runs.flwr_cli import FlwrCli

__all__ = [
    "DEFAULT_ADDRESS",
    "RunningServer",
    "ServerState",
    "control_connection",
    "default_server_state",
    "register_nodes",
    "start_server",
]

log = logging.getLogger("fedpriv.deploy.server")
DEFAULT_ADDRESS = "127.0.0.1:9092"
_ANY = {"0.0.0.0", "::", ""}
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its terminating NUL


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

    @property
    def proxy_log(self) -> Path:
        return self.root / "logs" / "proxy.log"

    @property
    def refused_log(self) -> Path:
        """Requests the proxy refused or that failed (status 4xx/5xx)."""
        return self.root / "logs" / "proxy-refused.log"

    @property
    def superexec_log(self) -> Path:
        return self.root / "logs" / "superexec.log"

    @property
    def proxy_dir(self) -> Path:
        return self.root / "proxy"

    @property
    def socket(self) -> Path:
        return self.root / "superlink.sock"

    @property
    def superexec_secret(self) -> Path:
        return self.root / "superexec.secret"

    @property
    def token_file(self) -> Path:
        return self.root / "control.token"

    def read_info(self) -> dict[str, Any] | None:
        """``superlink.json`` of the last start (None if the server never started here)."""
        try:
            doc = json.loads(self.info.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StateError(f"{self.info} is corrupt: {exc}") from None
        return doc if isinstance(doc, dict) else None

    def control_token(self, *, create: bool = False) -> str | None:
        """The operator's Control API token (made on first start, owner-only)."""
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            token = ""
        except PermissionError:
            raise StateError(
                f"{self.token_file} is not readable: only the account that runs "
                "`fedpriv server start` can use its Control API"
            ) from None
        if not token and create:
            token = new_token()
            atomic_write_text(self.token_file, token + "\n", mode=0o600)
        return token or None

    def read_nodes(self) -> dict[str, int]:
        """Registered node ids (empty when the server has not registered any)."""
        try:
            doc = json.loads(self.nodes.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise RunFailedError(f"{self.nodes} is corrupt: {exc}") from None
        return {str(k): int(v) for k, v in doc.get("nodes", {}).items()}


def control_connection(state: ServerState, requested: str | None = None) -> tuple[str, str | None]:
    """Where the ``flwr`` CLI reaches the Control API of ``fedpriv server start``, and its token.

    Parameters
    ----------
    state : ServerState
        The server's state folder (``superlink.json``, ``control.token``).
    requested : str, optional
        An address the user gave (``--superlink``/``--address``). The server's public address
        (Fleet routes only) is taken to mean its Control API; any other address (an SSH
        tunnel's local end) is used as given, with the token from the state folder.

    Returns
    -------
    (address, token or None)
    """
    info = state.read_info()
    token = state.control_token() if state.root.exists() else None
    if info is None or "control_address" not in info:
        if requested is None:
            raise ConfigError(
                f"no `fedpriv server start` state in {state.root}: give the Control API "
                "address, or the server's --state-dir"
            )
        return requested, token
    control = str(info["control_address"])
    if requested is None:
        return control, token
    host, port = parse_address(requested)
    phost, pport = parse_address(str(info["address"]))
    public = {(phost, pport), ("127.0.0.1", pport) if phost in _ANY else (phost, pport)}
    if (host, port) in public or (host == "localhost" and port == pport):
        log.info(
            "%s is the server's public (Fleet) address; using its Control API %s",
            requested,
            control,
        )
        return control, token
    return requested, token


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


def _lock(state: ServerState) -> IO[str]:
    fh = open(state.root / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held while serving
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise StateError(
            f"{state.root} is in use by another `fedpriv server start`; stop it first"
        ) from None
    return fh


@dataclass
class RunningServer:
    """The processes of a started server, and what it registered."""

    bundle: VerifiedBundle
    state: ServerState
    address: str
    control_address: str
    cli: FlwrCli
    superlink: ManagedProcess
    proxy: ManagedProcess
    superexec: ManagedProcess | None = None
    nodes: dict[str, int] = field(default_factory=dict)
    lock: IO[str] | None = None

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """The processes to watch, in start order."""
        procs = (self.superlink, self.proxy, self.superexec)
        return tuple(p for p in procs if p is not None)

    def stop(self) -> None:
        """Stop every process (with its descendants) and release the state folder."""
        for p in reversed(self.processes):
            p.stop()
        self.release()

    def release(self) -> None:
        """Release the state folder lock (after the processes were stopped)."""
        if self.lock is not None:
            self.lock.close()
            self.lock = None


def _died(procs: tuple[ManagedProcess, ...], what: str) -> RunFailedError:
    dead = [p for p in procs if not p.alive()]
    if not dead:
        return RunFailedError(f"timed out {what}")
    p = dead[0]
    return RunFailedError(
        f"{p.name} exited with status {p.returncode()} {what}. Log {p.log_path}:\n{p.log_tail(25)}"
    )


def _check_bindable(host: str, port: int, what: str) -> None:
    """Fail early and clearly when an address is taken or not on this host (nginx would only
    say so in its log)."""
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(sockaddr)
    except OSError as exc:
        raise ConfigError(
            f"{what} {format_hostport(host, port)}: cannot listen there ({exc})"
        ) from None


def start_server(
    bundle_dir: Path,
    *,
    address: str = DEFAULT_ADDRESS,
    control_address: str | None = None,
    state_dir: Path | None = None,
    dealer_fingerprint: str | None = None,
    ready_timeout: float = 60.0,
) -> RunningServer:
    """Verify the server bundle, start the SuperLink, its proxy and SuperExec, register the nodes.

    Parameters
    ----------
    address : str
        Public ``HOST:PORT`` for SuperNodes (Fleet routes only).
    control_address : str, optional
        Loopback ``HOST:PORT`` of the Control and Runtime APIs (default: a free port on
        127.0.0.1, recorded in ``superlink.json``).

    Returns
    -------
    RunningServer
        The caller owns the processes and must stop them (:meth:`RunningServer.stop`, or
        :func:`~fedpriv.deploy.processes.supervise` then :meth:`RunningServer.release`).

    Raises
    ------
    CryptoError
        The bundle is tampered with, holds an HE secret, or its certificate is invalid.
    ConfigError
        Bad addresses, or a state folder path too long for a unix socket.
    FedprivError
        nginx is not installed.
    RunFailedError
        A process did not come up or node registration failed.
    """
    bundle = verify_bundle(bundle_dir, kind="server")
    for rel in bundle.meta["files"]:
        # (threshold custody: a key share or the clients' mask key)
        if Path(rel).name in ("secret.key", "he_secret.key", "he_share.fpkey", "mask.key"):
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
    chost, cport = parse_address(control_address) if control_address else ("127.0.0.1", free_port())
    if not is_loopback(chost):
        raise ConfigError(
            f"--control-address {control_address}: the Control API must stay on loopback "
            "(127.0.0.1); reach it from elsewhere through an SSH tunnel"
        )
    if cport == port:
        raise ConfigError(f"--control-address {control_address}: use another port than {port}")
    if len(os.fsencode(state.socket)) > _MAX_SOCKET_PATH:
        raise ConfigError(
            f"state folder {state.root} is too long for a unix socket path "
            f"({_MAX_SOCKET_PATH} bytes at most): choose a shorter --state-dir"
        )
    nginx = nginx_exe()
    lock = _lock(state)
    try:
        _check_bindable(host or "0.0.0.0", port, "--address")
        _check_bindable(chost, cport, "--control-address")
    except BaseException:
        lock.close()
        raise
    try:
        return _start(bundle, state, lock, nginx, (host, port), (chost, cport), ready_timeout)
    except BaseException:
        lock.close()
        raise


def _start(
    bundle: VerifiedBundle,
    state: ServerState,
    lock: IO[str],
    nginx: str,
    public: tuple[str, int],
    local: tuple[str, int],
    ready_timeout: float,
) -> RunningServer:
    """Start the three processes of :func:`start_server` (arguments already checked)."""
    (host, port), (chost, cport) = public, local
    address, control = format_hostport(host, port), format_hostport(chost, cport)
    token = state.control_token(create=True)
    assert token is not None  # made above when missing
    atomic_write_text(state.superexec_secret, new_token(), mode=0o600)
    proxy_cfg = ProxyConfig(
        prefix=state.proxy_dir,
        public=(host or "0.0.0.0", port),
        control=(chost, cport),
        upstream=state.socket,
        certfile=bundle.path("server.crt"),
        keyfile=bundle.path("server.key"),
        cafile=bundle.path("ca.crt"),
        control_token=token,
        access_log=state.refused_log,
    )
    state.refused_log.parent.mkdir(parents=True, exist_ok=True)
    write_nginx_conf(proxy_cfg)
    cli = FlwrCli(state.flwr_home, control, bundle.path("ca.crt"), token=token)
    env = {**cli.env(), "PYTHONUNBUFFERED": "1"}
    superlink = ManagedProcess(
        "flower-superlink",
        [
            sys.executable,
            "-m",
            "fedpriv.deploy.superlink_socket",
            str(state.socket),
            "--ssl-certfile",
            str(bundle.path("server.crt")),
            "--ssl-keyfile",
            str(bundle.path("server.key")),
            "--ssl-ca-certfile",
            str(bundle.path("ca.crt")),
            "--enable-supernode-auth",
            "--isolation",
            "process",
            "--superexec-auth-secret-file",
            str(state.superexec_secret),
            "--disable-runtime-dependency-installation",
        ],
        env=env,
        log_path=state.log,
        cwd=state.root,
    )
    proxy = ManagedProcess(
        "nginx", nginx_argv(nginx, proxy_cfg), env=env, log_path=state.proxy_log, cwd=state.root
    )
    server = RunningServer(bundle, state, address, control, cli, superlink, proxy, lock=lock)
    try:
        superlink.start()
        proxy.start()
        procs = (superlink, proxy)

        def both() -> bool:
            return superlink.alive() and proxy.alive()

        if not (
            wait_for_port("127.0.0.1" if host in _ANY else host, port, ready_timeout, both)
            and wait_for_port(chost, cport, ready_timeout, both)
        ):
            raise _died(procs, f"while the proxy started on {address} and {control}")
        if not wait_for_unix_socket(state.socket, ready_timeout, both):
            raise _died(procs, f"while the SuperLink started on {state.socket}")
        # uvicorn binds the socket once the app has started: registering (through the proxy,
        # with the token) is the first Control API call and checks the whole chain.
        try:
            server.nodes = register_nodes(bundle, cli, state)
            if not server.nodes:
                cli.nodes()
        except FedprivError:
            if not both():
                raise _died(procs, "while registering the nodes") from None
            raise
        server.superexec = ManagedProcess(
            "flower-superexec",
            [
                flower_exe("flower-superexec"),
                "--runtime-api-address",
                control,
                "--root-certificates",
                str(bundle.path("ca.crt")),
                "--superexec-auth-secret-file",
                str(state.superexec_secret),
                "--parent-pid",
                str(superlink.pid),
            ],
            env=env,
            log_path=state.superexec_log,
            cwd=state.root,
        ).start()
        atomic_write_text(
            state.info,
            json.dumps(
                {
                    "address": address,
                    "control_address": control,
                    "pid": superlink.pid,
                    "pids": {"fedpriv": os.getpid(), **{p.name: p.pid for p in server.processes}},
                    "bundle": str(bundle.root),
                    "federation": bundle.federation,
                    "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                },
                indent=2,
            ),
            mode=0o600,
        )
    except BaseException:
        server.stop()  # releases the lock too
        raise
    return server
