"""The Flower apps a deployment runs: thin layers over :mod:`fedpriv.apps`.

* Server: one ServerApp, two tasks chosen by the run config ``fedpriv-task`` (read, with every
  other run-config key, through :class:`fedpriv.runs.flwr_config.FlowerRunConfig`): ``train``
  (the normal encrypted FedAvg run, :func:`fedpriv.apps.server.run_server`) and ``relay-keys``
  (:func:`fedpriv.deploy.relay.serve_relay`). With ``allowed-nodes`` set (``fedpriv run`` sets
  it from the node ids ``fedpriv server start`` registered) the strategy only ever sees those
  nodes, so a node someone else registered through Flower's unauthenticated Control API is
  never sampled.
* Client: :func:`fedpriv.apps.make_client_app` plus a ``query`` handler for the key relay.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedpriv.errors import ConfigError
from fedpriv.runs.flwr_config import FlowerRunConfig
from fedpriv.runs.stoppable import DelegatingGrid

__all__ = [
    "AllowListGrid",
    "make_deploy_client_app",
    "make_deploy_server_app",
]


class AllowListGrid(DelegatingGrid):
    """A Grid that only shows (and only sends to) an allow-list of node ids."""

    def __init__(self, inner: Grid, allowed: set[int]) -> None:
        super().__init__(inner)
        self._allowed = allowed

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

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._inner.send_and_receive(self._check(messages), timeout=timeout)


def make_deploy_server_app() -> ServerApp:
    """The deployment ServerApp (see the module docstring)."""
    from fedpriv.runs.flwr_app import run_flwr_server

    app = ServerApp()

    @app.main()
    def _main(grid: Grid, context: Context) -> None:
        rc = FlowerRunConfig.from_context(context)
        allowed = rc.allowed_node_ids()
        g: Grid = AllowListGrid(grid, allowed) if allowed else grid
        if rc.task == "train":
            run_flwr_server(g, context, deal_keys=False)
        else:  # relay-keys (FlowerRunConfig admits no other task)
            from fedpriv.deploy.relay import serve_relay

            if not rc.keys_dir:
                raise ConfigError("relay: run config 'keys-dir' must name the server bundle")
            serve_relay(
                g,
                Path(rc.keys_dir),
                rc.run_folder(context.run_id),
                node_wait_s=rc.node_wait_s,
                timeout_s=120.0,
                node_map=rc.node_ids(),
            )

    return app


def make_deploy_client_app() -> ClientApp:
    """The deployment ClientApp: fedpriv's train/evaluate handlers (which review every request
    against the device's own policy, ``policy.json`` in its state folder), the threshold-custody
    partial decryption, plus the sealed-key relay."""
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
