"""Flower's SuperLink served on a unix socket (``python -m fedpriv.deploy.superlink_socket``).

``flower-superlink`` 1.42 serves its Fleet, Control and Runtime APIs on one TCP ``--host``/
``--port``, and every local user can connect to a loopback port. This entry point runs the
same SuperLink (Flower's own argument parsing, app factory and lifespan, uvicorn with the same
TLS files) on a unix socket instead, inside the owner-only server state folder: only the
operator's account can reach it, and the reverse proxy (:mod:`fedpriv.deploy.proxy`) decides
which route is reachable from where.

Usage::

    python -m fedpriv.deploy.superlink_socket SOCKET [flower-superlink options]

It relies on ``flower-superlink`` internals (``_parse_superlink_lifespan_config``,
``SuperLinkLifespan``, ``create_app``), so it checks the pinned Flower version and fails
loudly on any other.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

__all__ = ["FLWR_VERSION", "main"]

FLWR_VERSION = "1.42.0"


def main(argv: list[str] | None = None) -> None:
    """Parse ``SOCKET`` and the ``flower-superlink`` options, then serve until stopped."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0].startswith("-"):
        sys.exit(
            "usage: python -m fedpriv.deploy.superlink_socket SOCKET [flower-superlink options]"
        )
    sock, flower_args = Path(args[0]), args[1:]

    import uvicorn
    from flwr.supercore.version import package_version

    if package_version != FLWR_VERSION:
        sys.exit(
            f"fedpriv serves the SuperLink on a unix socket through flwr {FLWR_VERSION} "
            f"internals, but flwr {package_version} is installed (pip install "
            f"flwr=={FLWR_VERSION})"
        )
    # `flwr.superlink.cli` re-exports a function under the module's name: import the module.
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    sys.argv = ["flower-superlink", *flower_args]
    config = cli._parse_superlink_lifespan_config()
    if config.isolation != "process":
        # In subprocess isolation the SuperLink starts a SuperExec aimed at --host/--port,
        # where nothing listens, and ignores the SuperExec authentication secret.
        sys.exit("the SuperLink on a unix socket needs --isolation process")
    app = create_app(config, cli.SuperLinkLifespan)
    sock.unlink(missing_ok=True)  # a stale socket of a killed SuperLink
    uvicorn.run(
        app=app,
        uds=str(sock),
        reload=False,
        access_log=True,
        log_config=get_uvicorn_log_config(console_handler.level),
        ssl_keyfile=config.ssl_keyfile,
        ssl_certfile=config.ssl_certfile,
        workers=1,
    )


if __name__ == "__main__":
    main()
