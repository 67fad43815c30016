"""The monitor's web server: Starlette + uvicorn, one page, server-sent events, read-only.

Routes (GET/HEAD only; anything else is 405 and nothing can write):

* ``/``                 the page (self-contained HTML, CSS and JS shipped as package data)
* ``/static/<file>``    ``monitor.css`` and ``monitor.js``
* ``/api/snapshot``     the current view as JSON
* ``/events``           server-sent events: a ``snapshot`` event whenever a run file changes

Bound to 127.0.0.1 by default; the ``Host`` header must then name the loopback address (no DNS
rebinding), and a Content-Security-Policy forbids every fetch outside this origin.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from fedpriv.monitor.state import RunReader

__all__ = ["MonitorServer", "make_app"]

_STATIC = {"monitor.css": "text/css; charset=utf-8", "monitor.js": "text/javascript; charset=utf-8"}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _asset(name: str) -> bytes:
    return resources.files("fedpriv.monitor").joinpath("static", name).read_bytes()


def make_app(
    root: Path,
    *,
    poll_s: float = 0.5,
    keepalive_s: float = 15.0,
    allowed_hosts: list[str] | None = None,
    stop: threading.Event | None = None,
) -> Starlette:
    """The ASGI app watching ``root`` (a run folder, or a folder of runs: the newest is shown)."""
    reader = RunReader(root)
    stopping = stop or threading.Event()

    async def page(_request: Request) -> Response:
        return Response(_asset("monitor.html"), media_type="text/html", headers=_HEADERS)

    async def static(request: Request) -> Response:
        name = str(request.path_params["name"])
        if name not in _STATIC:
            return Response("not found", status_code=404, headers=_HEADERS)
        return Response(_asset(name), media_type=_STATIC[name], headers=_HEADERS)

    async def snapshot(_request: Request) -> Response:
        doc = await anyio.to_thread.run_sync(reader.snapshot)
        return JSONResponse(doc, headers=_HEADERS)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            last: Any = object()
            quiet_since = time.monotonic()
            yield "retry: 2000\n\n"
            while not stopping.is_set():
                stamp = await anyio.to_thread.run_sync(reader.stamp)
                if stamp != last:
                    last = stamp
                    doc = await anyio.to_thread.run_sync(reader.snapshot)
                    yield f"event: snapshot\ndata: {json.dumps(doc, separators=(',', ':'))}\n\n"
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > keepalive_s:
                    yield ": keep-alive\n\n"
                    quiet_since = time.monotonic()
                if await request.is_disconnected():
                    return
                await anyio.sleep(poll_s)

        headers = {**_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/static/{name}", static, methods=["GET"]),
        Route("/api/snapshot", snapshot, methods=["GET"]),
        Route("/events", events, methods=["GET"]),
    ]
    middleware = (
        [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)] if allowed_hosts else []
    )
    return Starlette(routes=routes, middleware=middleware)


class MonitorServer:
    """Serve the monitor for ``root`` on ``host:port`` (port 0: a free port).

    :meth:`start` runs it in a daemon thread (``fedpriv simulate --monitor``); :meth:`serve`
    blocks (``fedpriv monitor``). The socket is bound in the constructor, so :attr:`url` is
    known and the port is taken before anything is printed.
    """

    def __init__(self, root: Path, *, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(64)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        # Bound to loopback: only requests addressed to loopback (blocks DNS rebinding).
        allowed = ["127.0.0.1", "localhost"] if host in _LOOPBACK else None
        self.app = make_app(Path(root), allowed_hosts=allowed, stop=self._stop)
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            log_config=None,  # leave the host program's logging alone
            access_log=False,
            timeout_graceful_shutdown=2,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve(self) -> None:
        """Serve until interrupted (Ctrl-C)."""
        try:
            self._server.run(sockets=[self.sock])
        finally:
            self._stop.set()
            self.sock.close()

    def start(self) -> str:
        """Serve in a background thread; return the URL once the server accepts connections."""
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and self._thread.is_alive():
            if time.monotonic() > deadline:
                break
            time.sleep(0.02)
        return self.url

    def stop(self) -> None:
        """Stop serving and release the port."""
        self._stop.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.sock.close()

    def __enter__(self) -> MonitorServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
