"""``fedpriv client start``: a ``flower-supernode`` that runs the fedpriv ClientApp on local data.

The device keeps everything in one owner-only state folder::

    STATE/
      dealer.fingerprint   the dealer key this device trusts (pinned on first start)
      keys/params.json     public HE parameters (from the verified bundle)
      keys/secret.key      HE secret (from the bundle, or stored by the sealed-key relay)
      privacy_state.json   accountant history: cumulative epsilon survives restarts
      policy.json          the owner's privacy policy: what any run may ask of this device
      node-config.toml     what the ClientApp reads (keys-dir, state-dir, data, client-id...)
      bin/flwr-clientapp   runs the installed fedpriv ClientApp, never the run's FAB code
      flwr-home/, logs/supernode.log
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from fedpriv.deploy.bundle import VerifiedBundle, check_pin, verify_bundle
from fedpriv.deploy.pki import load_node_private, node_key_fingerprint
from fedpriv.deploy.processes import ManagedProcess, flower_exe, free_port, parse_address
from fedpriv.deploy.threshold import clear_threshold_keys, install_bundle_keys
from fedpriv.deploy.warm import SOCKET_ENV, install_shim
from fedpriv.errors import ConfigError, CryptoError, DataError, RunFailedError, StateError
from fedpriv.fileio import atomic_write_text
from fedpriv.privacy.policy import DevicePolicy

__all__ = [
    "ClientStart",
    "default_client_state",
    "normalize_data_spec",
    "prepare_client",
    "start_supernode",
]

log = logging.getLogger("fedpriv.deploy.client")
_SCHEMES = ("csv:", "mnist:", "hf:")
REFUSED_MARKERS = ("Failed to activate SuperNode", "No SuperNode found with the given public key")
TLS_MARKERS = ("CERTIFICATE_VERIFY_FAILED", "SSL/TLS handshake error", "certificate verify failed")
CONNECTED_MARKER = re.compile(r"SuperNode ID:\s*(\d+)")


def default_client_state(bundle: VerifiedBundle) -> Path:
    """``$FEDPRIV_HOME/<client-id>-<federation>``."""
    from fedpriv.fileio import fedpriv_home

    return fedpriv_home() / f"{bundle.meta['client_id']}-{bundle.federation[:16]}"


def normalize_data_spec(spec: str) -> str:
    """Make a ``--data`` value absolute: a CSV file -> ``csv:/abs``, a folder -> ``mnist:/abs``.

    Raises
    ------
    DataError
        The file or folder does not exist.
    """
    s = spec.strip()
    for scheme in _SCHEMES:
        if s.startswith(scheme):
            if scheme == "hf:":
                return s
            p = Path(s[len(scheme) :]).expanduser()
            if not p.exists():
                raise DataError(f"--data {spec}: {p} does not exist on this device")
            return scheme + str(p.resolve())
    p = Path(s).expanduser()
    if p.is_file() and p.suffix.lower() == ".csv":
        return "csv:" + str(p.resolve())
    if p.is_dir():
        return "mnist:" + str(p.resolve())
    if s == "digits":
        return s
    raise DataError(
        f"--data {spec}: not a CSV file, an MNIST folder, or a spec like csv:PATH, mnist:PATH, "
        "hf:NAME, digits"
    )


def _toml_str(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid TOML basic string


@dataclass(frozen=True)
class ClientStart:
    """Everything ``start_supernode`` needs, prepared and checked."""

    bundle: VerifiedBundle
    state: Path
    client_id: str
    node_key: Path
    keys_dir: Path
    node_config: Path
    has_secret: bool
    pin: str

    @property
    def policy(self) -> DevicePolicy:
        return DevicePolicy.load(self.state / "policy.json")


def prepare_client(
    bundle_dir: Path,
    *,
    data: str | None,
    state_dir: Path | None = None,
    partition: tuple[int, int] | None = None,
    node_key: Path | None = None,
    dealer_fingerprint: str | None = None,
    policy: DevicePolicy | None = None,
    insecure_test_seed: int | None = None,
    schema: Path | None = None,
) -> ClientStart:
    """Verify the bundle and lay out the device's state folder (no process is started).

    ``policy`` is the device owner's privacy policy (default: :class:`DevicePolicy`'s defaults);
    it is written to ``STATE/policy.json`` and every request of every run is reviewed against it.
    ``insecure_test_seed`` (tests only) makes the device's DP randomness reproducible: every
    record it signs says so and its runs are marked not private.

    Raises
    ------
    CryptoError
        Tampered bundle, unexpected dealer key, or a node key that is not the registered one.
    ConfigError, DataError
        Bad arguments.
    """
    bundle = verify_bundle(bundle_dir, kind="client")
    cid = str(bundle.meta["client_id"])
    state = Path(state_dir).expanduser().resolve() if state_dir else default_client_state(bundle)
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o700)
    pin = check_pin(bundle, state, dealer_fingerprint)
    if node_key is None:
        if not bundle.has("node.key"):
            raise ConfigError(
                f"bundle {bundle.root} has no node.key (the device made its own): pass --node-key"
            )
        node_key = bundle.path("node.key")
    node_key = Path(node_key).expanduser().resolve()
    try:
        st = node_key.stat()
        key = load_node_private(node_key.read_bytes())
    except OSError as exc:
        raise CryptoError(f"node key {node_key}: {exc}") from None
    if st.st_mode & 0o077:
        raise CryptoError(
            f"node key {node_key} is readable by other users (mode {st.st_mode & 0o777:o}); "
            f"run: chmod 600 {node_key}"
        )
    if node_key_fingerprint(key.public_key()) != bundle.meta.get("node_key"):
        raise CryptoError(
            f"node key {node_key} is not the key the dealer registered for {cid} "
            f"({bundle.meta.get('node_key')})"
        )
    keys = state / "keys"
    keys.mkdir(exist_ok=True)
    keys.chmod(0o700)
    params_text = bundle.path("params.json").read_text(encoding="utf-8")
    old_params = keys / "params.json"
    if old_params.exists() and old_params.read_text(encoding="utf-8") != params_text:
        # Re-keyed federation: the old secret belongs to other parameters.
        (keys / "secret.key").unlink(missing_ok=True)
        clear_threshold_keys(keys)
    atomic_write_text(old_params, params_text, mode=0o644)
    threshold = install_bundle_keys(bundle, keys)  # threshold custody: share, mask key
    if bundle.has("secret.key"):
        data_bytes = bundle.path("secret.key").read_bytes()
        target = keys / "secret.key"
        if not target.exists() or target.read_bytes() != data_bytes:
            from fedpriv.crypto import KeyHolder

            KeyHolder.from_bytes(data_bytes).save(target)
    has_secret = (
        (keys / "secret.key").exists()
        or bundle.meta.get("scheme") == "off"
        or (threshold and (keys / "mask.key").exists())
    )
    lines = {
        "keys-dir": str(keys),
        "state-dir": str(state),
        "client-id": cid,
        "bundle": str(bundle.root),
        "node-key": str(node_key),
        "identity-key": str(node_key),  # signs every update (fedpriv.crypto.identity)
    }
    if schema is not None:  # the device's own data schema: checked before every round
        from fedpriv.data.schema import load_schema

        schema = Path(schema).expanduser().resolve()
        load_schema(schema)  # ConfigError now rather than a failing client later
        lines["schema"] = str(schema)
    if data:
        lines["data"] = normalize_data_spec(data)
    elif partition is None:
        raise ConfigError(
            "give --data (this device's own dataset), or --partition-id/--num-partitions to "
            "train on a partition of the run's dataset (demos and tests)"
        )
    policy_path = state / "policy.json"
    atomic_write_text(
        policy_path, json.dumps((policy or DevicePolicy()).to_dict(), indent=2), mode=0o600
    )
    lines["policy"] = str(policy_path)
    body = "\n".join(f"{k} = {_toml_str(v)}" for k, v in lines.items())
    if insecure_test_seed is not None:
        body += f"\ninsecure-test-seed = {int(insecure_test_seed)}"
    if partition is not None:
        pid, n = partition
        if not 0 <= pid < n:
            raise ConfigError(f"--partition-id {pid} must be in 0..{n - 1}")
        body += f"\npartition-id = {pid}\nnum-partitions = {n}"
    node_config = state / "node-config.toml"
    atomic_write_text(node_config, "# written by fedpriv client start\n" + body + "\n", mode=0o600)
    return ClientStart(bundle, state, cid, node_key, keys, node_config, has_secret, pin)


@contextlib.contextmanager
def state_lock(state: Path) -> Iterator[IO[str]]:
    """Hold an exclusive lock on the state folder (one SuperNode per device state)."""
    fh = open(state / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StateError(
                f"{state} is in use by another `fedpriv client start`; stop it first"
            ) from None
        yield fh
    finally:
        fh.close()


def start_supernode(
    prep: ClientStart,
    superlink: str,
    *,
    runtime_port: int | None = None,
    connect_timeout: float = 60.0,
    max_wait_time: float | None = None,
    warm: bool = True,
) -> tuple[ManagedProcess, ManagedProcess | None]:
    """Start ``flower-supernode`` for a prepared client and wait until the SuperLink accepts it.

    With ``warm`` (default) a warm ClientApp server (:mod:`fedpriv.deploy.warm`) starts too,
    so each message costs a fork instead of a fresh interpreter importing torch and Opacus.

    Returns
    -------
    (supernode, warm server or None)
        The caller stops both (:func:`fedpriv.deploy.processes.serve`).

    Raises
    ------
    CryptoError
        The SuperLink refused the node's key (not registered), or TLS verification failed (the
        bundle's CA did not issue the server's certificate, or it does not name the host).
    RunFailedError
        The SuperNode exited or did not connect within ``connect_timeout``.
    """
    host, port = parse_address(superlink)
    rport = runtime_port or free_port()
    bin_dir = prep.state / "bin"
    install_shim(bin_dir)
    argv = [
        flower_exe("flower-supernode"),
        "--superlink",
        f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "--root-certificates",
        str(prep.bundle.path("ca.crt")),
        "--auth-supernode-private-key",
        str(prep.node_key),
        "--node-config",
        str(prep.node_config),
        "--isolation",
        "subprocess",
        "--host",
        "127.0.0.1",
        "--port",
        str(rport),
    ]
    if max_wait_time is not None:
        argv += ["--max-wait-time", str(max_wait_time)]
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(prep.state / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop(SOCKET_ENV, None)
    warm_proc: ManagedProcess | None = None
    if warm:
        sock = prep.state / "warm.sock"
        if len(str(sock)) > 100:  # AF_UNIX path limit
            sock = Path(tempfile.mkdtemp(prefix="fedpriv-warm-")) / "s"
        env[SOCKET_ENV] = str(sock)
        warm_proc = ManagedProcess(
            "fedpriv-warm",
            [sys.executable, "-m", "fedpriv.deploy.warm", str(sock)],
            env=env,
            log_path=prep.state / "logs" / "warm.log",
            cwd=prep.state,
        ).start()
    log_path = prep.state / "logs" / "supernode.log"
    try:
        return _connect(prep, superlink, argv, env, log_path, connect_timeout), warm_proc
    except BaseException:
        if warm_proc is not None:
            warm_proc.stop()
        raise


def _connect(
    prep: ClientStart,
    superlink: str,
    argv: list[str],
    env: dict[str, str],
    log_path: Path,
    connect_timeout: float,
) -> ManagedProcess:
    deadline = time.monotonic() + connect_timeout
    # The SuperLink answers "activation failed" both for an unknown key and for a node it still
    # counts as online (an earlier session killed without signing off, for up to two heartbeat
    # intervals). A device that connected before from this state folder retries; a new one fails
    # at once.
    seen_before = bool(CONNECTED_MARKER.search(_read_from(log_path, 0)))
    while True:
        offset = log_path.stat().st_size if log_path.exists() else 0
        proc = ManagedProcess("flower-supernode", argv, env=env, log_path=log_path, cwd=prep.state)
        proc.start()
        try:
            outcome = _await_connection(proc, log_path, offset, deadline)
        except BaseException:
            proc.stop()
            raise
        if outcome == "connected":
            return proc
        proc.stop()
        if outcome == "refused" and seen_before and time.monotonic() + 5.0 < deadline:
            log.warning(
                "%s: the SuperLink refused the node; an earlier session may still count as "
                "online there (up to about a minute): retrying",
                prep.client_id,
            )
            time.sleep(5.0)
            continue
        raise _connect_error(outcome, prep, superlink, proc, log_path, connect_timeout, seen_before)


def _connect_error(
    outcome: str,
    prep: ClientStart,
    superlink: str,
    proc: ManagedProcess,
    log_path: Path,
    connect_timeout: float,
    seen_before: bool,
) -> Exception:
    if outcome == "refused":
        why = (
            "it still counts an earlier session of this node as online (another `fedpriv client "
            "start` with this bundle is running, or one was killed less than about a minute "
            "ago), or it no longer has the node's key registered (a restarted server: run "
            "`fedpriv server register` there)"
            if seen_before
            else "its key is not registered there (the operator registers nodes with `fedpriv "
            "server start`, or `fedpriv server register` after `fedpriv keys add-node`, using "
            "the current server bundle)"
        )
        return CryptoError(f"the SuperLink at {superlink} refused node {prep.client_id}: {why}")
    if outcome == "tls":
        return CryptoError(
            f"TLS verification of the SuperLink at {superlink} failed: its certificate was not "
            "issued by this bundle's CA (a bundle from another `fedpriv keys init`?) or does not "
            f"name this host (deal keys with --server-host). Log {log_path}"
        )
    if outcome == "exited":
        return RunFailedError(
            f"flower-supernode exited (status {proc.returncode()}) before connecting to "
            f"{superlink}; log {log_path}:\n{proc.log_tail(20)}"
        )
    return RunFailedError(
        f"could not connect to the SuperLink at {superlink} within {connect_timeout:.0f}s: "
        f"check the address and that the server runs. Log {log_path}"
    )


def _await_connection(proc: ManagedProcess, log_path: Path, offset: int, deadline: float) -> str:
    """Watch a starting SuperNode's log: connected, refused, tls, exited or timeout."""
    while True:
        text = _read_from(log_path, offset)
        if CONNECTED_MARKER.search(text):
            return "connected"
        if any(m in text for m in REFUSED_MARKERS):
            return "refused"
        if any(m in text for m in TLS_MARKERS):
            return "tls"
        if not proc.alive():
            return "exited"
        if time.monotonic() > deadline:
            return "timeout"
        time.sleep(0.3)


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            fh.seek(offset)
            return fh.read()
    except OSError:
        return ""
