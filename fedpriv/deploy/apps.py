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

import json
import math
from collections.abc import Iterable
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from fedpriv.errors import ConfigError, WireError
from fedpriv.runs.flwr_config import FlowerRunConfig

__all__ = [
    "AllowListGrid",
    "apply_device_limits",
    "make_deploy_client_app",
    "make_deploy_server_app",
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


def apply_device_limits(msg: Message, context: Context) -> None:
    """Enforce the device's own privacy limits on an incoming train instruction.

    The run's config (and with it ``privacy.max_epsilon``) comes from whoever submitted the
    run. With node config ``max-epsilon`` (``fedpriv client start --max-epsilon``) the device
    lowers the run's budget cap to its own, refuses runs without record-level DP, and refuses a
    ``delta`` above ``max-delta``, so no run can spend more of its budget than it agreed to
    (the ClientApp's budget check then refuses the round, and says so).

    Raises
    ------
    WireError
        The run asks for weaker privacy than the device accepts.
    """
    nc = context.node_config
    raw_cap = nc.get("max-epsilon", "")
    if raw_cap in ("", None):
        return
    cap = float(raw_cap)
    max_delta = float(nc.get("max-delta", 1e-5))
    rec = msg.content.config_records.get("config")
    if rec is None or not isinstance(rec.get("fedpriv-config"), str):
        raise WireError("instruction: missing run config")
    try:
        doc = json.loads(str(rec["fedpriv-config"]))
    except ValueError:
        raise WireError("instruction: run config is not valid JSON") from None
    p = doc.get("privacy") if isinstance(doc, dict) else None
    if not isinstance(p, dict):
        raise WireError("instruction: run config has no privacy section")
    if p.get("mode") not in ("record", "both"):
        raise WireError(
            f"this device trains only with record-level DP (its budget is epsilon {cap:g}); "
            f"the run asks for privacy.mode={p.get('mode')!r}"
        )
    if float(p.get("delta", 1.0)) > max_delta:
        raise WireError(
            f"the run's privacy.delta={p.get('delta')} is above this device's limit {max_delta:g}"
        )
    if float(p.get("max_epsilon", math.inf)) > cap:
        p["max_epsilon"] = cap
        rec["fedpriv-config"] = json.dumps(doc, sort_keys=True)


def make_deploy_client_app() -> ClientApp:
    """The deployment ClientApp: fedpriv's train/evaluate handlers under the device's own
    privacy limits (:func:`apply_device_limits`), plus the sealed-key relay."""
    from fedpriv.apps.client import ClientSettings, handle_evaluate, handle_train
    from fedpriv.deploy.relay import handle_relay_query

    app = ClientApp()

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        apply_device_limits(msg, context)
        return handle_train(msg, context, ClientSettings.from_context(context))

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, ClientSettings.from_context(context))

    @app.query()
    def _query(msg: Message, context: Context) -> Message:
        return handle_relay_query(msg, context)

    return app
