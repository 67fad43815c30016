"""Fault injection for experiments and tests: a ClientApp whose clients fail on purpose.

Real failures (a device that crashes before training, or trains and then loses its update on the
way) are hard to time; this wraps fedpriv's own client handlers and fails exactly where asked,
so dropout handling and conservative accounting can be tested on Flower's simulation engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedpriv.apps.client import ClientSettings, _client_id, handle_evaluate, handle_train

__all__ = ["Fault", "make_faulty_client_app"]

FaultKind = Literal["crash-before-train", "lose-update", "crash-on-decrypt"]


@dataclass(frozen=True)
class Fault:
    client_id: str
    server_round: int
    kind: FaultKind


class InjectedFault(RuntimeError):
    """Raised by a client that was told to fail."""


def make_faulty_client_app(settings: ClientSettings, faults: tuple[Fault, ...]) -> ClientApp:
    app = ClientApp()

    def fault_for(msg: Message, context: Context) -> Fault | None:
        rnd = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        cid = _client_id(context)
        return next((f for f in faults if f.client_id == cid and f.server_round == rnd), None)

    @app.train()
    def _train(msg: Message, context: Context) -> Message:
        fault = fault_for(msg, context)
        if fault is not None and fault.kind == "crash-before-train":
            raise InjectedFault(
                f"{fault.client_id} crashed before training in round {fault.server_round}"
            )
        reply = handle_train(msg, context, settings)
        if fault is not None and fault.kind == "lose-update":
            # The client trained (and was charged); its update never reaches the server.
            raise InjectedFault(f"{fault.client_id} lost its update in round {fault.server_round}")
        return reply

    @app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return handle_evaluate(msg, context, settings)

    @app.train("decrypt")
    def _decrypt(msg: Message, context: Context) -> Message:
        from fedpriv.apps.decrypt import handle_decrypt

        rnd = int(msg.content.config_records["decrypt"]["server-round"])  # type: ignore[arg-type]
        cid = _client_id(context)
        if any(
            f.client_id == cid and f.server_round == rnd and f.kind == "crash-on-decrypt"
            for f in faults
        ):
            # A share holder that drops out between aggregation and decryption.
            raise InjectedFault(f"{cid} crashed before its partial decryption in round {rnd}")
        return handle_decrypt(msg, context, settings)

    return app
