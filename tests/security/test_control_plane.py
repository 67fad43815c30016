"""Attacks on the control plane of a server started exactly as docs/deployment.md says.

One module-scoped federation on loopback: ``fedpriv keys init`` (2 nodes), ``fedpriv server
start --address 127.0.0.1:PORT`` (the SuperLink on a unix socket, nginx in front, SuperExec
authentication), two ``fedpriv client start``. A stranger holds only the federation's public CA
certificate (what every device bundle carries) and tries what worked before this design
(issue 10): list, submit, stop and read runs, register and unregister nodes, acquire the
ServerApp's runtime task, against the public address and against the loopback Control API
address. Each test fails if the attack succeeds; the operator's own run must still complete
through the proxy while the attacks go on.

Every process is stopped at the end; the module checks that none is left (nginx included,
whose environment cannot carry the test marker: its pids are recorded while it runs).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.deploy_harness import (
    Cli,
    client_cli,
    experiment_toml,
    fedpriv,
    free_port,
    kill_leftovers,
    leftover_processes,
    run_cli,
    server_cli,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CONFIG = experiment_toml("control-plane", seed=5, rounds=1, num_clients=2)

REFUSED = {401, 403, 404}


# ----------------------------------------------------------------------------- helpers
def _pids_tree(pid: int) -> dict[int, str]:
    """``pid`` and its descendants, with their start times (to tell a reused pid apart)."""
    from fedpriv.deploy.processes import _start_time, descendants

    return {p: _start_time(p) for p in [pid, *descendants(pid)] if _start_time(p)}


def _still_running(pids: dict[int, str]) -> list[int]:
    from fedpriv.deploy.processes import _exists, _start_time

    return [p for p, t in pids.items() if _exists(p) and _start_time(p) == t]


def _tcp_listening_ports(pid: int) -> set[int]:
    """TCP ports on which process ``pid`` holds a listening socket (``/proc``)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if f[3] == "0A" and f[9] in inodes:  # 0A = LISTEN
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
    return ports


def _unix_listening_paths(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        f = line.split()
        if len(f) >= 8 and f[6] in inodes and f[5] == "01":  # 01 = listening
            paths.add(f[7])
    return paths


@dataclass
class Plane:
    root: Path
    env: dict[str, str]
    port: int
    control: str
    cfg_path: Path
    server: Cli
    clients: dict[int, Cli]
    procs: list[Cli]
    info: dict[str, object]
    startup_s: float
    watched: dict[int, str] = field(default_factory=dict)

    def test_env(self) -> dict[str, str]:
        """The federation's environment, marked for ``no_leftover_processes`` when in use."""
        mark = os.environ.get("FEDPRIV_TEST_MARK")
        return {**self.env, "FEDPRIV_TEST_MARK": mark} if mark else dict(self.env)

    @property
    def public(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def control_port(self) -> int:
        return int(self.control.rsplit(":", 1)[1])

    @property
    def state(self) -> Path:
        return self.root / "server-state"

    @property
    def ca(self) -> Path:
        return self.root / "fed" / "server" / "ca.crt"

    def nodes(self) -> dict[str, int]:
        from fedpriv.deploy.server import ServerState

        return ServerState(self.state).read_nodes()

    def operator(self, tmp: Path):  # type: ignore[no-untyped-def]
        """The operator's ``flwr`` CLI (token from the state folder)."""
        from fedpriv.deploy.server import ServerState, control_connection
        from fedpriv.runs.flwr_cli import FlwrCli

        address, token = control_connection(ServerState(self.state))
        assert token, "no operator token in the state folder"
        return FlwrCli(tmp / "operator-flwr", address, self.ca, token=token)


def _wait_ready(server: Cli) -> float:
    wait_for(lambda: "SuperLink ready" in server.text() or not server.alive(), 180, "the server")
    assert server.alive(), server.text()[-3000:]
    m = re.search(r"up in ([0-9.]+)s", server.text())
    assert m, server.text()[-2000:]
    return float(m.group(1))


def _watch(info: dict[str, object]) -> dict[int, str]:
    pids = info["pids"]
    assert isinstance(pids, dict)
    out: dict[int, str] = {}
    for name in ("flower-superlink", "nginx", "flower-superexec"):
        out.update(_pids_tree(int(pids[name])))
    return out


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    root = tmp_path_factory.mktemp("plane")
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "FEDPRIV_HOME": str(root / "fedpriv-home"),
        "PYTHONUNBUFFERED": "1",
        "FEDPRIV_TEST_MARK": marker,
    }
    cfg_path = root / "cfg.toml"
    cfg_path.write_text(CONFIG)
    procs: list[Cli] = []
    watched: dict[int, str] = {}
    try:
        r = fedpriv(
            ["keys", "init", "--nodes", "2", "--out", "fed", "--config", str(cfg_path)], env, root
        )
        assert r.returncode == 0, r.stderr[-3000:]
        port = free_port()
        server = server_cli(root, port).start(env, root)
        procs.append(server)
        startup = _wait_ready(server)
        info = json.loads((root / "server-state" / "superlink.json").read_text())
        watched.update(_watch(info))
        print(f"fedpriv server start: ready in {startup:.1f}s")
        clients = {
            i: client_cli(
                root, port, i, seed=None, num_partitions=2, connect_timeout_s=120, extra=("--cold",)
            ).start(env, root)
            for i in range(2)
        }
        procs.extend(clients.values())
        for c in clients.values():
            wait_for(
                lambda c=c: "connected to" in c.text() or not c.alive(), 150, f"{c.name} to connect"
            )
            assert c.alive(), c.text()[-3000:]
        yield Plane(
            root,
            env,
            port,
            str(info["control_address"]),
            cfg_path,
            server,
            clients,
            procs,
            info,
            startup,
            watched,
        )
    finally:
        for p in procs:
            if p.alive():
                p.signal_group(signal.SIGTERM)
        for p in reversed(procs):
            p.stop()
        deadline = time.monotonic() + 15
        while (
            leftover_processes(root, marker) or _still_running(watched)
        ) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [*kill_leftovers(root, marker), *_still_running(watched)]
        for pid in _still_running(watched):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"processes left behind: {left}"


class Stranger:
    """Someone on the network with the federation CA certificate and Flower's own CLI."""

    def __init__(self, home: Path, ca: Path) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.ca = home / "ca.crt"
        shutil.copyfile(ca, self.ca)

    def flwr(self, address: str, *args: str) -> subprocess.CompletedProcess[str]:
        from fedpriv.deploy.processes import flower_exe

        (self.home / "config.toml").write_text(
            f'[superlink]\ndefault = "s"\n\n[superlink.s]\naddress = "{address}"\n'
            f'root-certificates = "{self.ca}"\n'
        )
        env = {**os.environ, "FLWR_HOME": str(self.home), "COLUMNS": "200", "NO_COLOR": "1"}
        return subprocess.run(
            [flower_exe("flwr"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )

    def post(
        self, address: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> int:
        """A raw HTTPS POST (the exact path is sent, no client-side normalisation)."""
        import http.client

        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPSConnection(
            host, int(port), context=ssl.create_default_context(cafile=str(self.ca)), timeout=30
        )
        try:
            conn.putrequest("POST", path, skip_accept_encoding=True)
            for k, v in {"content-type": "application/protobuf", **(headers or {})}.items():
                conn.putheader(k, v)
            conn.putheader("content-length", str(len(body)))
            conn.endheaders(body)
            resp = conn.getresponse()
            resp.read()
            return int(resp.status)
        finally:
            conn.close()


def _refused(res: subprocess.CompletedProcess[str]) -> bool:
    """A ``flwr`` command that failed with the proxy's 403/404 (and reported no success)."""
    out = res.stdout + res.stderr
    ok = False
    with contextlib.suppress(ValueError):
        start = res.stdout.find("{")
        ok = start != -1 and bool(json.loads(res.stdout[start:]).get("success"))
    return not ok and ("403 Forbidden" in out or "404 Not Found" in out)


# ----------------------------------------------------------------------------- tests
def test_superlink_has_no_network_port(plane: Plane) -> None:
    """The SuperLink listens on no TCP port at all; the proxy holds exactly the two addresses."""
    pids = plane.info["pids"]
    assert isinstance(pids, dict)
    superlink, nginx = int(pids["flower-superlink"]), int(pids["nginx"])
    assert _tcp_listening_ports(superlink) == set()
    assert _unix_listening_paths(superlink) == {str(plane.state / "superlink.sock")}
    # positive control: the same inspection finds the proxy's two listeners
    assert _tcp_listening_ports(nginx) == {plane.port, plane.control_port}
    assert plane.control.startswith("127.0.0.1:")
    # the socket, the token and the SuperExec secret are the operator's only
    assert (plane.state.stat().st_mode & 0o777) == 0o700
    for name in ("control.token", "superexec.secret", "proxy/nginx.conf"):
        assert (plane.state / name).stat().st_mode & 0o077 == 0, name
    # the public address serves none of the SuperLink's other routes
    s = Stranger(plane.root / "stranger-http", plane.ca)
    for path in ("/health", "/docs", "/openapi.json", "/v1/runtime/acquire-task"):
        assert s.post(plane.public, path) == 404, path


def test_stranger_cannot_use_the_control_api(plane: Plane, tmp_path: Path) -> None:
    """``flwr ls/log/stop/run/supernode ...`` with only ca.crt: refused on both addresses."""
    from fedpriv.deploy.project import write_project

    operator = plane.operator(tmp_path)
    nodes_before = {int(n["node-id"]) for n in operator.nodes()}
    runs_before = operator.json_call(["list", operator.CONNECTION])["runs"]
    assert nodes_before == set(plane.nodes().values()) and len(nodes_before) == 2
    r = fedpriv(["keys", "node-key", "--out", str(tmp_path / "key")], plane.env, plane.root)
    assert r.returncode == 0, r.stderr
    app = write_project(tmp_path / "app")
    victim = str(plane.nodes()["client-0"])
    s = Stranger(tmp_path / "stranger", plane.ca)
    attempts = {
        "ls": ["ls", "s", "--format", "json"],
        "log": ["log", "1", "s", "--show"],
        "stop": ["stop", "1", "s", "--format", "json"],
        "run": ["run", str(app), "s", "--format", "json"],
        "supernode register": [
            "supernode",
            "register",
            str(tmp_path / "key" / "node.pub"),
            "s",
            "--format",
            "json",
        ],
        "supernode unregister": ["supernode", "unregister", victim, "s", "--format", "json"],
        "supernode list": ["supernode", "list", "s", "--format", "json"],
    }
    for address in (plane.public, plane.control):
        for what, args in attempts.items():
            res = s.flwr(address, *args)
            assert _refused(res), (
                f"stranger's `flwr {what}` on {address}:\n{res.stdout}{res.stderr}"
            )
    # nothing changed, and the proxy logged every refusal
    assert {int(n["node-id"]) for n in operator.nodes()} == nodes_before
    assert operator.json_call(["list", operator.CONNECTION])["runs"] == runs_before
    refused = (plane.state / "logs" / "proxy-refused.log").read_text()
    assert re.search(rf" {plane.port} \"POST /v1/control/start-run HTTP/1.1\" 404", refused)
    assert re.search(rf" {plane.control_port} \"POST /v1/control/start-run HTTP/1.1\" 403", refused)


def _forged_superexec_headers() -> dict[str, str]:
    """SuperExec authentication headers made with a guessed secret."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # type: ignore[attr-defined]
    from flwr.supercore.auth import create_superexec_auth_metadata, derive_auth_secret

    return create_superexec_auth_metadata(
        auth_secret=derive_auth_secret(b"guessed"),
        method="/flwr.proto.Runtime/AcquireTask",
        request=AcquireTaskRequest(),
    )


@pytest.mark.usefixtures("no_leftover_processes")
def test_operator_run_completes_while_a_stranger_attacks(plane: Plane, tmp_path: Path) -> None:
    """The operator's ``fedpriv run`` (DP + BFV) completes through the proxy; meanwhile every raw
    runtime/control request and every ``flwr stop``/``log`` of that run by a stranger is refused.
    """
    s = Stranger(tmp_path / "stranger", plane.ca)
    run_dir = plane.root / "run"
    # as docs/deployment.md says: the server's address
    run = run_cli(plane.root, plane.public, plane.cfg_path, run_dir, 480)
    run.start(plane.test_env(), plane.root)
    plane.procs.append(run)
    statuses: list[tuple[str, str, int]] = []
    stop = threading.Event()
    forged = _forged_superexec_headers()
    wrong_token = {"authorization": "Bearer " + base64.urlsafe_b64encode(os.urandom(32)).decode()}

    def hammer() -> None:
        while not stop.is_set():
            for address in (plane.public, plane.control):
                for path, headers in (
                    ("/v1/runtime/acquire-task", {}),
                    ("/v1/runtime/acquire-task", forged),
                    ("/v1/fleet/get-run/../../runtime/acquire-task", {}),
                    ("/v1/runtime/pull-task-input", {"flwr-task-token": "0" * 64}),
                    ("/v1/control/list-runs", {}),
                    ("/v1/control/list-runs", wrong_token),
                    ("/v1/control/stop-run", {}),
                    ("/v1/control/stream-logs", {}),
                ):
                    with contextlib.suppress(OSError):
                        statuses.append((address, path, s.post(address, path, headers=headers)))
            stop.wait(0.5)

    attacker = threading.Thread(target=hammer, daemon=True)
    attacker.start()
    try:
        m = wait_for(
            lambda: re.search(r"submitted train run (\d+)", run.text()) or not run.alive(),
            240,
            "the run to be submitted",
        )
        assert run.alive() or "finished:completed" in run.text(), run.text()[-3000:]
        assert isinstance(m, re.Match), run.text()[-3000:]
        run_id = m.group(1)
        for address in (plane.public, plane.control):
            for args in (["stop", run_id, "s", "--format", "json"], ["log", run_id, "s", "--show"]):
                res = s.flwr(address, *args)
                assert _refused(res), f"{args} on {address}:\n{res.stdout}{res.stderr}"
        assert run.popen is not None
        rc = run.popen.wait(480)
    finally:
        stop.set()
        attacker.join(30)
    out = run.text()
    assert rc == 0, out[-4000:]
    assert f"run {run_id} finished:completed" in out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["accepted"] for r in metrics["rounds"]] == [2]
    assert len(statuses) >= 16, statuses
    accepted = [t for t in statuses if t[2] not in REFUSED]
    assert not accepted, accepted
    public = {st for a, _p, st in statuses if a == plane.public}
    assert public == {404}, public
    # loopback: the runtime routes answer Flower's own refusal (SuperExec HMAC, task token)
    runtime = {st for a, p, st in statuses if a == plane.control and "/runtime/" in p}
    control = {st for a, p, st in statuses if a == plane.control and "/control/" in p}
    assert runtime == {401} and control == {403}, (runtime, control)


def test_forged_fleet_calls_are_refused(plane: Plane) -> None:
    """The public Fleet routes are node-authenticated: a stranger cannot unregister or deactivate
    a registered node, neither with its own key nor claiming the victim's public key."""
    import httpx
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.proto.fleet_pb2 import (  # type: ignore[attr-defined]
        DeactivateNodeRequest,
        UnregisterNodeFleetRequest,
    )
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes
    from flwr.supernode.fleet_http_client import FleetHttpClient
    from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

    from fedpriv.deploy.pki import load_node_public

    victim_id = plane.nodes()["client-0"]
    victim_pub = load_node_public(
        (plane.root / "fed" / "server" / "nodes" / "client-0.pub").read_bytes()
    )
    key = ec.generate_private_key(ec.SECP384R1())

    class ClaimVictimKey(NodeAuthHttpInterceptor):
        def __init__(self) -> None:
            super().__init__(key, key.public_key())
            self._public_key_bytes = public_key_to_bytes(victim_pub)

    for interceptor in (NodeAuthHttpInterceptor(key, key.public_key()), ClaimVictimKey()):
        client = FleetHttpClient.from_server_address(
            plane.public,
            insecure=False,
            root_certificates=plane.ca.read_bytes(),
            interceptors=[interceptor],
        )
        try:
            for call in (
                lambda c=client: c.DeactivateNode(DeactivateNodeRequest(node_id=victim_id)),
                lambda c=client: c.UnregisterNode(UnregisterNodeFleetRequest(node_id=victim_id)),
            ):
                with pytest.raises(httpx.HTTPStatusError) as exc:
                    call()
                assert exc.value.response.status_code == 401
        finally:
            client.close()
    assert plane.nodes()["client-0"] == victim_id
    assert plane.clients[0].alive() and plane.clients[1].alive()


@pytest.mark.usefixtures("no_leftover_processes")
def test_unregistered_node_is_refused(plane: Plane) -> None:
    """A node the server did not register cannot join through the proxy."""
    r = fedpriv(["keys", "add-node", "--out", "fed"], plane.env, plane.root)
    assert r.returncode == 0, r.stderr
    cli = Cli(
        "client-2",
        [
            "client",
            "start",
            "--superlink",
            plane.public,
            "--bundle",
            "fed/clients/client-2",
            "--state-dir",
            "state-2",
            "--data",
            "digits",
            "--connect-timeout",
            "60",
            "--cold",
        ],
        plane.root / "client-2.out",
    ).start(plane.test_env(), plane.root)
    plane.procs.append(cli)
    assert cli.popen is not None
    rc = cli.popen.wait(150)
    out = cli.text()
    assert rc == 4, out[-3000:]
    assert "refused node client-2" in out and "not registered" in out
    assert "No SuperNode found with the given public key" in (
        plane.state / "logs" / "superlink.log"
    ).read_text(errors="replace")


_LOCAL_ATTACK = r"""
import http.client, json, socket, ssl, sys
sock, token, port, ca = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
out = {}
try:
    s = socket.socket(socket.AF_UNIX); s.connect(sock); out["socket"] = "connected"
except OSError as e:
    out["socket"] = type(e).__name__
try:
    open(token).read(); out["token"] = "read"
except OSError as e:
    out["token"] = type(e).__name__
ctx = ssl.create_default_context(cadata=ca)
for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/acquire-task"):
    c = http.client.HTTPSConnection("127.0.0.1", port, context=ctx)
    c.request("POST", path, body=b"", headers={"content-type": "application/protobuf"})
    r = c.getresponse(); r.read(); out[path] = r.status
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_drive_the_server(plane: Plane) -> None:
    """A local account (``nobody``) on the server host reaches the loopback listener, but not the
    SuperLink's socket nor the token; the Control API refuses it and acquire-task needs the
    SuperExec secret."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 for the unprivileged account")
    res = subprocess.run(
        [
            python,
            "-c",
            _LOCAL_ATTACK,
            str(plane.state / "superlink.sock"),
            str(plane.state / "control.token"),
            str(plane.control_port),
            plane.ca.read_text(),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        user=65534,
        group=65534,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["socket"] == "PermissionError" and out["token"] == "PermissionError", out
    assert out["/v1/control/list-runs"] == out["/v1/control/start-run"] == 403, out
    assert out["/v1/runtime/acquire-task"] == 401, out


@pytest.mark.usefixtures("no_leftover_processes")
def test_proxy_death_or_ctrl_c_stops_the_server(plane: Plane, tmp_path: Path) -> None:
    """If nginx dies, `fedpriv server start` stops the SuperLink and SuperExec and exits 8 with
    the log tail; Ctrl-C stops everything with exit 0; a missing nginx or a taken port is a
    clear error before anything starts."""
    env = {**plane.test_env(), "FEDPRIV_NGINX": str(tmp_path / "no-nginx")}
    r = fedpriv(
        ["server", "start", "--bundle", "fed/server", "--state-dir", str(tmp_path / "st0")],
        env,
        plane.root,
        timeout=120,
    )
    assert r.returncode == 1 and "apt-get install -y nginx" in r.stderr, r.stderr
    r = fedpriv(
        ["server", "start", "--bundle", "fed/server", "--address", plane.public,
         "--state-dir", str(tmp_path / "st1")],
        plane.test_env(),
        plane.root,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 2 and "cannot listen there" in r.stderr, r.stderr
    for sig, victim in ((signal.SIGKILL, "nginx"), (signal.SIGINT, None)):
        state = tmp_path / f"st-{victim}"
        name = f"server-{victim}"
        server = server_cli(plane.root, free_port(), name, state=str(state), log=f"{name}.out")
        server.start(plane.test_env(), plane.root)
        plane.procs.append(server)
        _wait_ready(server)
        info = json.loads((state / "superlink.json").read_text())
        watched = _watch(info)
        if victim is None:  # Ctrl-C in the terminal: the whole foreground group
            server.signal_group(sig)
        else:
            os.kill(int(info["pids"][victim]), sig)
        assert server.popen is not None
        rc = server.popen.wait(60)
        text = server.text()
        if victim is None:
            assert rc == 0 and "SuperLink stopped" in text, text[-3000:]
        else:
            assert rc == 8, text[-3000:]
            assert "error: nginx exited" in text and "stopped flower-superlink" in text, text
        wait_for(lambda w=watched: not _still_running(w), 20, "the server's processes to exit")
