"""The control-plane pieces that need no running federation: the proxy configuration, the route
list against Flower's own, the Control API lookup, and process supervision.

The attacks themselves run against a real server in tests/security/test_control_plane.py.
"""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedpriv.deploy.proxy import (
    FLEET_ROUTES,
    ProxyConfig,
    new_token,
    nginx_exe,
    render_nginx_conf,
    write_nginx_conf,
)
from fedpriv.errors import ConfigError, FedprivError


def _cfg(tmp_path: Path, control: str = "127.0.0.1", token: str | None = None) -> ProxyConfig:
    return ProxyConfig(
        prefix=tmp_path / "proxy",
        public=("0.0.0.0", 19092),
        control=(control, 19093),
        upstream=tmp_path / "superlink.sock",
        certfile=tmp_path / "server.crt",
        keyfile=tmp_path / "server.key",
        cafile=tmp_path / "ca.crt",
        control_token=token or new_token(),
        access_log=tmp_path / "refused.log",
    )


def test_fleet_routes_are_exactly_what_a_supernode_calls() -> None:
    """The public routes are the SuperNode client's paths, all of them Fleet routes of the
    SuperLink app (so a Flower upgrade that changes them fails here, not in production)."""
    from flwr.supernode import fleet_http_client

    called = set(re.findall(r'path="/v1/fleet/([a-z-]+)"', inspect.getsource(fleet_http_client)))
    assert called == set(FLEET_ROUTES)
    from fastapi.routing import iter_route_contexts
    from flwr.superlink.main import create_app

    served = {
        c.route.path for c in iter_route_contexts(create_app().routes) if hasattr(c.route, "path")
    }
    assert {f"/v1/fleet/{r}" for r in FLEET_ROUTES} == {p for p in served if "/fleet/" in p}
    # what stays off the public address
    assert any(p.startswith("/v1/control/") for p in served)
    assert any(p.startswith("/v1/runtime/") for p in served)


def test_config_exposes_fleet_publicly_and_control_only_with_the_token(tmp_path: Path) -> None:
    token = new_token()
    conf = render_nginx_conf(_cfg(tmp_path, token=token))
    public, local = conf.split("    server {")[1:3]
    assert "listen 0.0.0.0:19092 ssl;" in public and "/v1/control" not in public
    assert "/v1/runtime" not in public and "location / { return 404; }" in public
    assert "listen 127.0.0.1:19093 ssl;" in local
    control = local.split("location ~ ^/v1/runtime/")[0]
    assert f'if ($http_authorization != "Bearer {token}")' in control and "return 403;" in control
    assert conf.count("limit_except POST { deny all; }") == 3
    assert "proxy_ssl_verify on;" in conf and "include" not in conf
    # nothing outside the state folder
    assert "/var/" not in conf and "/run/" not in conf and "/etc/" not in conf


def test_control_address_must_be_loopback(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        render_nginx_conf(_cfg(tmp_path, control="0.0.0.0"))
    with pytest.raises(ConfigError, match="loopback"):
        render_nginx_conf(_cfg(tmp_path, control="10.0.0.5"))
    with pytest.raises(ConfigError, match="cannot be written"):
        render_nginx_conf(_cfg(tmp_path, token='x"; return 200; #'))


def _nginx_installed() -> bool:
    from fedpriv.deploy.proxy import nginx_exe
    from fedpriv.errors import FedprivError

    try:
        nginx_exe()  # where `fedpriv server start` looks for it
    except FedprivError:
        return False
    return True


@pytest.mark.skipif(not _nginx_installed(), reason="nginx not installed (make install-dev)")
def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    """``nginx -t`` with the bundle-style files: the configuration is valid as written."""
    from fedpriv.deploy.pki import TlsCa, make_server_cert

    ca = TlsCa.generate()
    key, cert = make_server_cert(ca, [])
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem())
    (tmp_path / "server.crt").write_bytes(cert)
    (tmp_path / "server.key").write_bytes(key)
    cfg = _cfg(tmp_path)
    write_nginx_conf(cfg)
    assert cfg.conf.stat().st_mode & 0o077 == 0 and cfg.prefix.stat().st_mode & 0o077 == 0
    res = subprocess.run(
        [nginx_exe(), "-t", "-p", str(cfg.prefix), "-c", str(cfg.conf), "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    assert "test is successful" in res.stderr


def test_missing_nginx_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEDPRIV_NGINX", str(tmp_path / "nowhere"))
    with pytest.raises(FedprivError, match=r"apt-get install -y nginx"):
        nginx_exe()


def test_control_connection_maps_the_public_address(tmp_path: Path) -> None:
    from fedpriv.deploy.server import ServerState, control_connection

    state = ServerState(tmp_path)
    with pytest.raises(ConfigError, match="no `fedpriv server start` state"):
        control_connection(state)
    assert control_connection(state, "127.0.0.1:7000") == ("127.0.0.1:7000", None)
    (tmp_path / "superlink.json").write_text(
        json.dumps({"address": "0.0.0.0:9092", "control_address": "127.0.0.1:41234"})
    )
    token = state.control_token(create=True)
    assert token and (tmp_path / "control.token").stat().st_mode & 0o077 == 0
    assert state.control_token() == token  # kept across restarts
    assert control_connection(state) == ("127.0.0.1:41234", token)
    for public in ("127.0.0.1:9092", "0.0.0.0:9092", "localhost:9092"):
        assert control_connection(state, public) == ("127.0.0.1:41234", token)
    # an SSH tunnel's local end is used as given, with the operator's token
    assert control_connection(state, "127.0.0.1:9993") == ("127.0.0.1:9993", token)


def test_flwr_cli_gets_the_token_from_its_private_home(tmp_path: Path) -> None:
    """The token is stored where the flwr CLI reads an account's access token (owner-only)."""
    from flwr.cli.constant import ACCESS_TOKEN_STORE_KEY, AUTHN_TYPE_STORE_KEY
    from flwr.supercore.credential_store import FileCredentialStore

    from fedpriv.runs.flwr_cli import FlwrCli

    (tmp_path / "ca.crt").write_text("unused")
    FlwrCli(tmp_path / "home", "127.0.0.1:41234", tmp_path / "ca.crt", token="s3cret")
    creds = tmp_path / "home" / "credentials.yaml"
    assert creds.stat().st_mode & 0o077 == 0
    store = FileCredentialStore(creds)
    assert store.get(AUTHN_TYPE_STORE_KEY % "127.0.0.1:41234") == b"oidc"
    assert store.get(ACCESS_TOKEN_STORE_KEY % "127.0.0.1:41234") == b"s3cret"
    FlwrCli(tmp_path / "plain", "127.0.0.1:41234", tmp_path / "ca.crt")
    assert not (tmp_path / "plain" / "credentials.yaml").exists()


def test_supervise_stops_the_others_when_one_dies(tmp_path: Path) -> None:
    from fedpriv.deploy.processes import ManagedProcess, supervise

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    a = ManagedProcess("a", sleeper, env={}, log_path=tmp_path / "a.log").start()
    b = ManagedProcess("b", sleeper, env={}, log_path=tmp_path / "b.log").start()
    c = ManagedProcess(
        "c",
        [sys.executable, "-c", "print('bye'); raise SystemExit(3)"],
        env={},
        log_path=tmp_path / "c.log",
    ).start()
    t0 = time.monotonic()
    rc, dead = supervise([a, b, c])
    assert dead is c and rc == 3
    assert not a.alive() and not b.alive()
    assert time.monotonic() - t0 < 15
    assert "bye" in c.log_tail()
    assert a.returncode() == -signal.SIGTERM
