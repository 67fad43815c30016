"""The Flower apps a deployment runs: thin layers over :mod:`fedpriv.apps`.

* Server: one ServerApp, two tasks chosen by the run config ``fedpriv-task``: ``train`` (the
  normal encrypted FedAvg run, :func:`fedpriv.apps.server.run_server`) and ``relay-keys``
  (:func:`fedpriv.deploy.relay.serve_relay`). With ``allowed-nodes`` set (``fedpriv run`` sets
  it from the node ids ``fedpriv server start`` registered) the strategy only ever sees those
  nodes, so a node someone else registered through Flower's unauthenticated Control API is
  never sampled.
* Client: :func:`fedpriv.apps.make_client_app` plus a ``query`` handler for the key relay.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedpriv.apps.server import ServerSettings
from fedpriv.errors import ConfigError

__all__ = [
    "AllowListGrid",
    "deploy_server_settings",
    "make_deploy_client_app",
    "make_deploy_server_app",
    "parse_allowed_nodes",
    "parse_node_map",
]


class AllowListGrid(Grid):
    """A Grid that only shows (and only sends to) an allow-list of node ids."""

    def __init__(self, inner: Grid, allowed: set[int]) -> None:
        self._inner = inner
        self._allowed = allowed

    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._inner.get_node_ids() if int(n) in self._allowed]

    def _check(self, messages: Iterable[Message]) -> list[Message]:
        msgs = list(messages)
        for m in msgs:
            if int(m.metadata.dst_node_id) not in self._allowed:
                raise ConfigError(
                    f"refusing to send to node {m.metadata.dst_node_id}: not registered by "
                    "`fedpriv server start`"
                )
        return msgs

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(self._check(messages))

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._inner.send_and_receive(self._check(messages), timeout=timeout)


def parse_node_map(text: str) -> dict[str, int]:
    """Parse the ``node-map`` run config value (``client-id=node-id,...``)."""
    out: dict[str, int] = {}
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        cid, sep, node = part.partition("=")
        try:
            if not sep or not cid:
                raise ValueError
            out[cid] = int(node)
        except ValueError:
            raise ConfigError(f"run config node-map: {part!r} is not client-id=node-id") from None
    return out


def parse_allowed_nodes(text: str) -> set[int]:
    """Parse the ``allowed-nodes`` run config value (comma-separated node ids)."""
    out: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            out.add(int(part))
        except ValueError:
            raise ConfigError(f"run config allowed-nodes: {part!r} is not a node id") from None
    return out


def _run_dir(context: Context, name: str) -> Path:
    rd = str(context.run_config.get("run-dir", "") or "")
    if rd:
        return Path(rd)
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def deploy_server_settings(context: Context) -> ServerSettings:
    """ServerSettings for a deployed run: config file, server bundle, run dir from the run config."""
    from fedpriv.config import load_config
    from fedpriv.deploy.bundle import verify_bundle

    rc = context.run_config
    cfg_path = str(rc.get("fedpriv-config", "") or "")
    cfg = load_config(cfg_path or None)
    keys = str(rc.get("keys-dir", "") or "")
    if not keys:
        raise ConfigError("server: run config 'keys-dir' must name the server bundle")
    bundle = verify_bundle(Path(keys), kind="server")
    wait = float(rc.get("node-wait-s", 600.0) or 600.0)
    return ServerSettings(
        cfg, _run_dir(context, cfg.name), bundle.path("params.json"), node_wait_timeout=wait
    )


def make_deploy_server_app() -> ServerApp:
    """The deployment ServerApp (see the module docstring)."""
    from fedpriv.apps.server import run_server

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        rc = context.run_config
        allowed = parse_allowed_nodes(str(rc.get("allowed-nodes", "") or ""))
        g: Grid = AllowListGrid(grid, allowed) if allowed else grid
        task = str(rc.get("fedpriv-task", "train") or "train")
        if task == "train":
            run_server(g, deploy_server_settings(context))
        elif task == "relay-keys":
            from fedpriv.deploy.relay import serve_relay

            keys = str(rc.get("keys-dir", "") or "")
            if not keys:
                raise ConfigError("relay: run config 'keys-dir' must name the server bundle")
            serve_relay(
                g,
                Path(keys),
                _run_dir(context, "relay"),
                node_wait_s=float(rc.get("node-wait-s", 600.0) or 600.0),
                timeout_s=120.0,
                node_map=parse_node_map(str(rc.get("node-map", "") or "")),
            )
        else:
            raise ConfigError(f"run config fedpriv-task={task!r}: use 'train' or 'relay-keys'")

    return app


def make_deploy_client_app() -> ClientApp:
    """The deployment ClientApp: fedpriv's train/evaluate handlers (which review every request
    against the device's own policy, ``policy.json`` in its state folder), plus the sealed-key
    relay."""
    from fedpriv.apps.client import ClientSettings, handle_evaluate, handle_train
    from fedpriv.deploy.relay import handle_relay_query

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        return handle_train(msg, context, ClientSettings.from_context(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, ClientSettings.from_context(context))

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return handle_relay_query(msg, context)

    @app.train("decrypt")
    def _decrypt(msg: Message, context: Context) -> Message:
        from fedpriv.apps.decrypt import handle_decrypt  # threshold custody

        return handle_decrypt(msg, context, ClientSettings.from_context(context))

    return app
