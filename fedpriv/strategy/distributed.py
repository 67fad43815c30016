"""The server strategy of privacy mode ``distributed``: aggregates are gradients, not models.

Each round's encrypted aggregate is a noisy sum of clipped gradients; every client holds the
model itself and takes the step. A client therefore needs every aggregate since the last one it
applied: the strategy remembers, per client, the last applied round its *signed* record states,
and sends each sampled client the aggregates after it (at most ``MAX_AGGREGATES`` per request,
oldest first; a client still behind refuses and gets the rest next round). A client it has not
heard from yet gets the most recent ones. Older aggregates are read back from the run folder.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid

from fedpriv.privacy.ledger import RECORD_FORMAT
from fedpriv.protocol import MAX_AGGREGATES, Instruction, build_instruction
from fedpriv.strategy.core import EncryptedFedAvg, RoundRecord

__all__ = ["DistributedFedAvg"]

_KEEP_IN_MEMORY = 8


class DistributedFedAvg(EncryptedFedAvg):
    """:class:`EncryptedFedAvg` whose clients receive every aggregate they have not applied.

    ``load_aggregate(round)`` returns a stored aggregate (the run folder's
    ``globals/round_NNN.bin``) or None; ``aggregate_rounds`` lists the rounds that have one
    (after a restart).
    """

    def __init__(
        self,
        *args: Any,
        load_aggregate: Callable[[int], bytes | None] | None = None,
        aggregate_rounds: Iterable[int] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._load_aggregate = load_aggregate
        self._rounds: list[int] = sorted(set(aggregate_rounds))
        self._recent: OrderedDict[int, bytes] = OrderedDict()
        self._applied: dict[str, int] = {}
        self._down: dict[int, int] = {}

    def restore_aggregates(self, rounds: Iterable[int]) -> None:
        """Rounds that have a stored aggregate (resume)."""
        self._rounds = sorted(set(rounds))

    @property
    def latest_aggregate(self) -> int:
        return self._rounds[-1] if self._rounds else 0

    def _blob(self, rnd: int) -> bytes | None:
        if rnd in self._recent:
            return self._recent[rnd]
        if rnd == self.latest_aggregate and self.global_blob is not None:
            return self.global_blob
        return self._load_aggregate(rnd) if self._load_aggregate is not None else None

    def _pending(self, node: int) -> tuple[tuple[int, bytes], ...]:
        cid = self._client_of.get(node)
        applied = self._applied.get(cid) if cid is not None else None
        if applied is None:
            rounds = self._rounds[-MAX_AGGREGATES:]
        else:
            rounds = [r for r in self._rounds if r > applied][:MAX_AGGREGATES]
        out = []
        for r in rounds:
            blob = self._blob(r)
            if blob is not None:
                out.append((r, blob))
        return tuple(out)

    def _messages(self, server_round: int, nodes: list[int], kind: str) -> list[Message]:
        msgs = []
        for n in nodes:
            aggs = self._pending(n)
            self._down[n] = sum(len(b) for _, b in aggs)
            ins = Instruction(
                server_round,
                self.config_json,
                self.params.fingerprint(),
                None,
                self.run_id,
                aggs,
                self.latest_aggregate,
            )
            msgs.append(Message(content=build_instruction(ins), dst_node_id=n, message_type=kind))
        return msgs

    # -- Strategy interface ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sampled = self._sample(grid)
        self._current = RoundRecord(server_round, sampled)
        return self._messages(server_round, sampled, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample_evaluators(grid)
        return self._messages(server_round, nodes, MessageType.EVALUATE) if nodes else []

    def _check_record(
        self, fmt: str, record: str, signature: bytes, client_id: str, node: int, rnd: int
    ) -> dict[str, Any]:
        doc = super()._check_record(fmt, record, signature, client_id, node, rnd)
        applied = doc.get("applied_round")
        if fmt == RECORD_FORMAT and isinstance(applied, int) and not isinstance(applied, bool):
            # The client's own signed word; a false one only hurts its own catch-up.
            self._applied[client_id] = max(0, min(applied, self.latest_aggregate))
        return doc

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        before = self.global_blob
        out = super().aggregate_train(server_round, replies)
        rec = self._current
        if rec is not None:
            for c in rec.clients:
                c.bytes_down = self._down.get(c.node_id, 0)
        if out[0] is not None and self.global_blob is not None and self.global_blob is not before:
            self._rounds.append(server_round)
            self._recent[server_round] = self.global_blob
            while len(self._recent) > _KEEP_IN_MEMORY:
                self._recent.popitem(last=False)
        return out
