"""The reverse proxy in front of the SuperLink: nginx, run by ``fedpriv server start``.

Flower 1.42 serves the Fleet API (SuperNodes), the Control API (submit, list, stop runs, read
logs, register nodes) and the Runtime API (SuperExec, ServerApp) on one port, and its Control
API authenticates no one without the commercial OIDC plugin. So the SuperLink listens only on
a unix socket in the owner-only state folder (:mod:`fedpriv.deploy.superlink_socket`), and nginx
(the Debian package, run unprivileged with everything under ``STATE/proxy/``) decides what is
reachable:

* the **public address** (``--address``) serves only the Fleet routes a SuperNode calls
  (:data:`FLEET_ROUTES`, POST only); everything else is 404. SuperNode authentication passes
  through untouched: each request carries the node's ECDSA signature over a timestamp in
  ``flwr-public-key``/``flwr-signature``/``flwr-timestamp`` headers, which nginx forwards and
  the SuperLink checks against the registered keys.
* a **loopback address** (``--control-address``) serves the Control API, only to requests
  with the operator's bearer token (the ``flwr`` CLI sends it from the private ``FLWR_HOME``
  fedpriv writes), else 403; and the Runtime API, whose ``acquire-task`` needs Flower's SuperExec
  HMAC (``--superexec-auth-secret-file``) and whose other routes need a per-task token.

Both listeners use the bundle's server certificate; nginx talks TLS to the SuperLink's socket
too (Flower refuses SuperNode authentication without TLS) and verifies its certificate against
the bundle CA.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

from fedpriv.errors import ConfigError, FedprivError
from fedpriv.fileio import atomic_write_text

__all__ = [
    "CONTROL_PREFIX",
    "FLEET_ROUTES",
    "RUNTIME_PREFIX",
    "ProxyConfig",
    "format_hostport",
    "is_loopback",
    "new_token",
    "nginx_argv",
    "nginx_exe",
    "render_nginx_conf",
    "write_nginx_conf",
]

#: Every Fleet API route a ``flower-supernode`` 1.42 calls (``flwr.supernode.fleet_http_client``).
FLEET_ROUTES = (
    "register-node",
    "activate-node",
    "deactivate-node",
    "unregister-node",
    "send-node-heartbeat",
    "pull-messages",
    "push-messages",
    "get-run",
    "get-fab",
    "push-object",
    "pull-object",
    "confirm-message-received",
)
CONTROL_PREFIX = "/v1/control/"
RUNTIME_PREFIX = "/v1/runtime/"
# Flower splits arrays into 5 MiB chunks; a run's FAB or a message body stays far below this.
MAX_BODY = "128m"
INSTALL_HINT = "apt-get install -y nginx (Debian/Ubuntu; `make install-dev` does it)"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_SBIN = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
_TEMP_PATHS = (
    ("client_body", "body"),
    ("proxy", "proxy"),
    ("fastcgi", "fastcgi"),
    ("uwsgi", "uwsgi"),
    ("scgi", "scgi"),
)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1, localhost)."""
    return host in _LOOPBACK or host.startswith("127.")


def format_hostport(host: str, port: int) -> str:
    """``HOST:PORT``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def new_token() -> str:
    """A fresh secret: 256 bits from the OS CSPRNG, URL-safe text."""
    return secrets.token_urlsafe(32)


def nginx_exe() -> str:
    """Path of the ``nginx`` binary: ``$FEDPRIV_NGINX``, else PATH, else /usr/sbin (which
    users' PATH often lacks)."""
    override = os.environ.get("FEDPRIV_NGINX")
    cands = [override] if override else [shutil.which("nginx"), *_SBIN]
    for cand in cands:
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    where = f"$FEDPRIV_NGINX={override} is not an executable" if override else "not found"
    raise FedprivError(
        f"nginx {where}: `fedpriv server start` puts nginx in front of the SuperLink so that "
        f"only SuperNode routes are public. Install it: {INSTALL_HINT}"
    )


@dataclass(frozen=True)
class ProxyConfig:
    """What the nginx configuration needs.

    Parameters
    ----------
    prefix : Path
        Owner-only folder for ``nginx.conf``, the pid file and temporary files.
    public : tuple[str, int]
        The address SuperNodes connect to (``0.0.0.0``/``::`` for all interfaces).
    control : tuple[str, int]
        The loopback address of the Control and Runtime APIs.
    upstream : Path
        The SuperLink's unix socket.
    certfile, keyfile, cafile : Path
        The bundle's server certificate, its key, and the federation CA.
    control_token : str
        The bearer token that Control API requests must carry.
    access_log : Path
        Where refused requests (status 4xx/5xx) are logged.
    """

    prefix: Path
    public: tuple[str, int]
    control: tuple[str, int]
    upstream: Path
    certfile: Path
    keyfile: Path
    cafile: Path
    control_token: str
    access_log: Path

    @property
    def conf(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def pid_file(self) -> Path:
        return self.prefix / "nginx.pid"


def _user_line() -> str:
    # A master process started by root would run its workers as `nobody`, who cannot reach
    # the socket in the owner-only state folder: keep them in the operator's account.
    if os.geteuid() != 0:
        return ""
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


def _q(value: object) -> str:
    """An nginx string literal."""
    text = str(value)
    if any(c in text for c in '"\\\n\r;{}$'):
        raise ConfigError(f"{text!r} cannot be written into the nginx configuration")
    return f'"{text}"'


def _route(prefix: str, names: str, *, token: str | None = None) -> list[str]:
    """A location for ``prefix`` + one of ``names`` (a regex alternation), POST only.

    The upstream gets the route nginx matched on the normalized path (``$1``), never the
    client's raw URI: no dot segment or percent escape can make it reach another route.
    """
    lines = [f"        location ~ ^{prefix}({names})$ {{"]
    if token is not None:
        lines += [
            f"            if ($http_authorization != {_q('Bearer ' + token)}) {{",
            "                return 403;",
            "            }",
        ]
    return [
        *lines,
        "            limit_except POST { deny all; }",
        f"            proxy_pass https://superlink{prefix}$1;",
        "            proxy_set_header X-Forwarded-For $remote_addr;",
        "        }",
    ]


def render_nginx_conf(cfg: ProxyConfig) -> str:
    """The nginx configuration (one file, no include of any system-wide file)."""
    if not is_loopback(cfg.control[0]):
        raise ConfigError(
            f"the Control API address must be loopback, not {cfg.control[0]} (reach it from "
            "elsewhere through an SSH tunnel)"
        )
    tmp = cfg.prefix / "tmp"
    lines = [
        "# written by `fedpriv server start` on each start; see fedpriv/deploy/proxy.py",
        *([_user_line()] if _user_line() else []),
        "daemon off;",
        "worker_processes 1;",
        f"pid {_q(cfg.pid_file)};",
        "error_log stderr warn;",
        "events { worker_connections 1024; }",
        "http {",
        *(f"    {kind}_temp_path {_q(tmp / sub)};" for kind, sub in _TEMP_PATHS),
        "    map $status $fedpriv_refused { ~^[23] 0; default 1; }",
        "    log_format fedpriv '$time_iso8601 $remote_addr $server_port \"$request\" $status';",
        f"    access_log {_q(cfg.access_log)} fedpriv if=$fedpriv_refused;",
        "    server_tokens off;",
        "    default_type application/octet-stream;",
        f"    client_max_body_size {MAX_BODY};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        f"    ssl_certificate {_q(cfg.certfile)};",
        f"    ssl_certificate_key {_q(cfg.keyfile)};",
        # Stream both ways (log streaming, object pushes): nothing is buffered to disk.
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_request_buffering off;",
        "    proxy_buffering off;",
        "    proxy_read_timeout 1h;",
        "    proxy_send_timeout 1h;",
        # The SuperLink's own TLS, verified against the federation CA.
        "    proxy_ssl_verify on;",
        f"    proxy_ssl_trusted_certificate {_q(cfg.cafile)};",
        "    proxy_ssl_name localhost;",
        "    proxy_ssl_server_name on;",
        "    proxy_ssl_protocols TLSv1.2 TLSv1.3;",
        f"    upstream superlink {{ server {_q('unix:' + str(cfg.upstream))}; keepalive 8; }}",
        "",
        "    # SuperNodes: the Fleet API only",
        "    server {",
        f"        listen {format_hostport(*cfg.public)} ssl;",
        *_route("/v1/fleet/", "|".join(FLEET_ROUTES)),
        "        location / { return 404; }",
        "    }",
        "",
        "    # the operator (Control API, bearer token); SuperExec and ServerApps (Runtime API)",
        "    server {",
        f"        listen {format_hostport(*cfg.control)} ssl;",
        *_route(CONTROL_PREFIX, "[a-z-]+", token=cfg.control_token),
        *_route(RUNTIME_PREFIX, "[a-z-]+"),
        "        location / { return 404; }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def write_nginx_conf(cfg: ProxyConfig) -> Path:
    """Write ``nginx.conf`` (owner-only: it holds the Control API token) and the temp folders."""
    cfg.prefix.mkdir(parents=True, exist_ok=True)
    cfg.prefix.chmod(0o700)
    for _kind, sub in _TEMP_PATHS:
        (cfg.prefix / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    atomic_write_text(cfg.conf, render_nginx_conf(cfg), mode=0o600)
    return cfg.conf


def nginx_argv(exe: str, cfg: ProxyConfig) -> list[str]:
    """Command line of the nginx master: our prefix and file only, errors to stderr."""
    return [exe, "-p", str(cfg.prefix), "-c", str(cfg.conf), "-e", "stderr"]
