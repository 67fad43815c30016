"""The server strategy: FedAvg over ciphertexts, without ever holding a secret key.

Each round the strategy samples clients, sends them the current *encrypted* global model
(nothing in round 1: clients build the same initial model from the run's seed), validates every
reply before it touches the running sum, and adds accepted updates one at a time (streaming:
memory does not grow with the number of clients). Clients pre-weight their updates by their
example counts and encrypt the counts too, so the server learns neither individual updates nor
individual counts; the clients divide after decrypting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedpriv.crypto.codec import AggregatorLike, PublicParams, open_aggregator
from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.errors import RunFailedError, VerificationError, WireError
from fedpriv.privacy.ledger import EVAL_FORMAT, RECORD_FORMAT, parse_record, record_digest
from fedpriv.protocol import (
    Instruction,
    build_instruction,
    metrics_digest,
    parse_eval_reply,
    parse_train_reply,
    reply_parts,
)
from fedpriv.strategy.threshold import DecryptionRecord, ThresholdDecryption

if TYPE_CHECKING:
    from fedpriv.crypto.tcustody import ThresholdPublic

__all__ = ["ClientEvalRecord", "ClientRoundRecord", "EncryptedFedAvg", "RoundRecord"]

log = logging.getLogger("fedpriv.server")


@dataclass
class ClientRoundRecord:
    node_id: int
    client_id: str
    status: str
    """accepted | refused | rejected | failed"""
    reason: str = ""
    metrics: dict[str, float | int] = field(default_factory=dict)
    record: str = ""
    """The client's signed record (JSON text, exactly as signed); empty when none was verified."""
    signature: str = ""
    """Its signature, hex."""
    bytes_up: int = 0
    bytes_down: int = 0
    update_sha256: str = ""
    parts: list[tuple[str, int, str]] = field(default_factory=list)
    """Everything the reply carried: (part, bytes, sha256), for the egress record."""

    @property
    def history_json(self) -> str:
        """The run's DP history from the signed record (``""`` without a record)."""
        if not self.record:
            return ""
        return json.dumps(json.loads(self.record).get("history"))


@dataclass
class ClientEvalRecord:
    node_id: int
    client_id: str
    status: str
    """evaluated | refused | rejected | failed"""
    reason: str = ""
    num_examples: int = 0
    loss: float = 0.0
    accuracy: float = 0.0
    record: str = ""
    signature: str = ""
    parts: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass
class RoundRecord:
    server_round: int
    sampled: list[int]
    clients: list[ClientRoundRecord] = field(default_factory=list)
    accepted: int = 0
    federated_loss: float | None = None
    federated_accuracy: float | None = None
    eval_examples: int = 0
    seconds: float = 0.0
    aggregate_seconds: float = 0.0
    global_bytes: int = 0
    eval_sampled: list[int] = field(default_factory=list)
    evals: list[ClientEvalRecord] = field(default_factory=list)
    needed: int = 1
    """Accepted updates this round needed for its aggregate to be used."""
    decryption: DecryptionRecord | None = None
    """Threshold custody: the round's decryption phase (None under shared custody)."""


class EncryptedFedAvg(ThresholdDecryption, Strategy):
    """Weighted FedAvg whose aggregation happens on ciphertexts (or plaintext when HE is off).

    Parameters
    ----------
    params:
        Public aggregation parameters (never a secret key).
    config_json:
        The run's resolved config, forwarded to clients (public).
    num_clients, fraction_train, min_train_clients:
        Federation size, share sampled per round, replies needed for a round to count.
    on_round:
        Called with each finished :class:`RoundRecord` and the new global blob (the run
        recorder writes files and checkpoints from it).
    threshold:
        Threshold custody's public material (key id, share indices): after each aggregation
        T share holders decrypt the aggregate (:mod:`fedpriv.strategy.threshold`), and the
        global model clients receive is their masked combined decryption.
    """

    def __init__(
        self,
        params: PublicParams,
        config_json: str,
        *,
        num_clients: int,
        fraction_train: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_train_clients: int = 0,
        round_timeout: float = 600.0,
        seed: int | None = None,
        on_round: Callable[[RoundRecord, bytes | None], None] | None = None,
        node_wait_timeout: float = 600.0,
        min_accepted: int = 0,
        round_gate: Callable[[int], str | None] | None = None,
        identities: IdentityRegistry | None = None,
        run_id: str | None = None,
        pinned_nodes: dict[str, int] | None = None,
        max_eval_examples: int = 2**31 - 1,
        threshold: ThresholdPublic | None = None,
    ) -> None:
        self.params = params
        # Updates must be signed by a registered client identity (None only in unit tests of
        # the aggregation itself).
        self.identities = identities
        self.run_id = run_id or secrets.token_hex(16)
        self.config_json = config_json
        self.num_clients = num_clients
        self.sample_size = max(1, round(fraction_train * num_clients))
        self.eval_size = round(fraction_evaluate * num_clients)
        # Default: half of the sampled clients must deliver, so one crashing or malicious
        # client cannot stop a round; clients that refused for budget reasons are not counted.
        self.min_train = min_train_clients or max(1, -(-self.sample_size // 2))
        self.round_timeout = round_timeout
        self.node_wait_timeout = node_wait_timeout
        self.on_round = on_round
        # Hard floor (client-level DP: fewer summed noise shares than planned is too little noise).
        self.min_accepted = min_accepted
        # Called before each round; a returned string stops the run (e.g. a spent budget).
        self.round_gate = round_gate
        # Client sampling must be unpredictable to anyone who knows the (public) config: the
        # client-level amplification by sampling holds only against parties who do not know the
        # sample. ``seed`` is kept for callers that need a reproducible sample (tests).
        self._rng = random.Random(seed if seed is not None else secrets.randbits(128))
        self.threshold = threshold
        self._agg: AggregatorLike = open_aggregator(
            params, threshold.key_id if threshold is not None else None
        )
        self.aggregate_blob: bytes | None = None
        self._round_updates: list[bytes] = []
        self.decryptions = 0
        self.decryption_check = str(
            json.loads(config_json).get("encryption", {}).get("decryption_check", "records")
        )
        # Node binding: a client id is accepted from one node only for the whole run (pre-set
        # from the deployment's registration, else bound on first verified contact).
        self._node_of: dict[str, int] = dict(pinned_nodes or {})
        self._client_of: dict[int, str] = {n: c for c, n in self._node_of.items()}
        self.max_eval_examples = max_eval_examples
        self.global_blob: bytes | None = None
        self.history: list[RoundRecord] = []
        self._current: RoundRecord | None = None
        self.stop_reason = ""

    # -- sampling -------------------------------------------------------------------------
    def _sample(self, grid: Grid) -> list[int]:
        deadline = time.monotonic() + self.node_wait_timeout
        while len(nodes := sorted(grid.get_node_ids())) < self.num_clients:
            if time.monotonic() > deadline:
                raise RunFailedError(
                    f"only {len(nodes)} of {self.num_clients} clients connected within "
                    f"{self.node_wait_timeout:.0f}s; check that every SuperNode is running"
                )
            time.sleep(0.5)
        return sorted(self._rng.sample(nodes, self.sample_size))

    def _instruction(self, server_round: int) -> Instruction:
        return Instruction(
            server_round,
            self.config_json,
            self.params.fingerprint(),
            self.global_blob,
            self.run_id,
        )

    # -- Strategy interface ---------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        sampled = self._sample(grid)
        self._current = RoundRecord(server_round, sampled)
        content = build_instruction(self._instruction(server_round))
        return [
            Message(content=content, dst_node_id=n, message_type=MessageType.TRAIN) for n in sampled
        ]

    def _bind(self, client_id: str, node: int) -> None:
        """Bind ``client_id`` to the node it speaks from; a second node is a replay or a forgery."""
        bound_node = self._node_of.get(client_id)
        bound_client = self._client_of.get(node)
        if bound_node is not None and bound_node != node:
            raise WireError(
                f"client id {client_id!r} belongs to node {bound_node} in this run, "
                f"not node {node} (replayed or forged reply)"
            )
        if bound_client is not None and bound_client != client_id:
            raise WireError(
                f"node {node} speaks for client {bound_client!r} in this run, not {client_id!r}"
            )
        self._node_of[client_id], self._client_of[node] = node, client_id

    def _check_record(
        self, fmt: str, record: str, signature: bytes, client_id: str, node: int, rnd: int
    ) -> dict[str, Any]:
        """Verify a client record's signature and that it speaks of this run, round and node."""
        try:
            doc = parse_record(record, fmt, source="client record")
        except VerificationError as exc:
            raise WireError(str(exc)) from None
        if self.identities is not None:
            self.identities.verify_record(client_id, record_digest(record), signature)
        for key, want in (
            ("run_id", self.run_id),
            ("round", rnd),
            ("client_id", client_id),
            ("node_id", node),
        ):
            if doc.get(key) != want:
                raise WireError(
                    f"client record: {key} is {doc.get(key)!r}, expected {want!r} "
                    "(replayed from another run, round or node?)"
                )
        self._bind(client_id, node)
        return doc

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rec = self._current
        assert rec is not None and rec.server_round == server_round
        down = len(self.global_blob or b"")
        self._agg.reset()
        self._round_updates = []
        seen: set[int] = set()
        delivered: set[str] = set()
        t0 = time.perf_counter()
        max_blob = int(getattr(self.params, "max_blob_bytes", 1 << 31))
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            cr = ClientRoundRecord(node, str(node), "failed", bytes_down=down)
            rec.clients.append(cr)
            # Sender checks come first: an unsampled or duplicate sender never reaches the sum.
            if node not in rec.sampled:
                if msg.has_error():
                    # Delivery errors are generated by the SuperLink itself (its own node id),
                    # not by a client: record the failure; the node it concerned shows as missing.
                    lines = str(msg.error.reason).strip().splitlines()
                    cr.reason = f"delivery failed: {lines[0][:300] if lines else 'error'}"
                    continue
                cr.status, cr.reason = "rejected", "sender was not sampled this round"
                continue
            if node in seen:
                cr.status, cr.reason = "rejected", "duplicate reply from this node"
                continue
            seen.add(node)
            if msg.metadata.reply_to_message_id == "" and msg.has_error():
                cr.reason = "no reply"
                continue
            if not msg.has_error():
                cr.parts = reply_parts(msg.content)  # recorded whether or not it validates
            try:
                r = parse_train_reply(msg, max_blob_bytes=max_blob)
            except WireError as exc:
                # Client errors carry whole remote tracebacks: keep the first line, bounded.
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else "error"
                cr.status, cr.reason = ("failed" if msg.has_error() else "rejected"), text[:300]
                log.warning("round %d: reply from node %d not used: %s", server_round, node, exc)
                continue
            cr.client_id, cr.metrics = r.client_id, r.metrics
            digest = hashlib.sha256(r.blob).hexdigest() if r.blob is not None else ""
            cr.bytes_up, cr.update_sha256 = (len(r.blob) if r.blob else 0), digest
            try:
                doc = self._check_record(
                    RECORD_FORMAT, r.record, r.signature, r.client_id, node, server_round
                )
                if r.client_id in delivered:
                    raise WireError(
                        f"client {r.client_id!r} already delivered this round (replayed update)"
                    )
                delivered.add(r.client_id)
                if doc.get("metrics_sha256") != metrics_digest(r.metrics):
                    raise WireError("metrics do not match the signed record")
                if doc.get("status") != ("refused" if r.blob is None else "trained"):
                    raise WireError("the signed record's status does not match the reply")
                if r.blob is not None:
                    if doc.get("update_sha256") != digest:
                        raise WireError("update digest does not match the signed record")
                    if r.metrics["update-bytes"] != len(r.blob) or doc.get("update_bytes") != len(
                        r.blob
                    ):
                        raise WireError("declared update size does not match the received bytes")
            except WireError as exc:
                cr.status, cr.reason = "rejected", str(exc)
                cr.record = ""
                log.warning(
                    "round %d: reply from client %s rejected: %s", server_round, cr.client_id, exc
                )
                continue
            cr.record, cr.signature = r.record, r.signature.hex()
            if r.blob is None:
                cr.status, cr.reason = "refused", r.refusal or "refused to train"
                log.info("round %d: client %s refused: %s", server_round, cr.client_id, cr.reason)
                continue
            try:
                self._agg.add(r.blob)
            except WireError as exc:
                cr.status, cr.reason = "rejected", str(exc)
                log.warning(
                    "round %d: update from client %s rejected: %s", server_round, cr.client_id, exc
                )
                continue
            cr.status = "accepted"
            if self.threshold is not None and self.decryption_check == "rebuild":
                self._round_updates.append(r.blob)
        rec.accepted = self._agg.count
        missing = set(rec.sampled) - seen
        for node in sorted(missing):
            rec.clients.append(
                ClientRoundRecord(
                    node, str(node), "failed", "no reply before the timeout", bytes_down=down
                )
            )
        rec.aggregate_seconds = time.perf_counter() - t0
        if rec.accepted == 0:
            rec.needed = max(1, self.min_accepted)
            return None, None
        refused = sum(c.status == "refused" for c in rec.clients)
        needed = max(1, self.min_accepted, min(self.min_train, len(rec.sampled) - refused))
        rec.needed = needed
        if rec.accepted < needed:
            log.warning(
                "round %d: only %d accepted updates (< %d); global model unchanged",
                server_round,
                rec.accepted,
                needed,
            )
            return None, None
        self.aggregate_blob = self._agg.result()
        if self.threshold is None:
            self.global_blob = self.aggregate_blob
            rec.global_bytes = len(self.global_blob)
        # Threshold custody: the global model changes only once T share holders decrypted it.
        return ArrayRecord(), MetricRecord({"accepted": rec.accepted})

    def _sample_evaluators(self, grid: Grid) -> list[int]:
        """This round's evaluators (none before a global model exists), recorded."""
        if self.global_blob is None or self.eval_size == 0:
            return []
        nodes = sorted(grid.get_node_ids())
        nodes = sorted(self._rng.sample(nodes, min(self.eval_size, len(nodes))))
        if self._current is not None:
            self._current.eval_sampled = nodes
        return nodes

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample_evaluators(grid)
        if not nodes:
            return []
        content = build_instruction(self._instruction(server_round))
        return [
            Message(content=content, dst_node_id=n, message_type=MessageType.EVALUATE)
            for n in nodes
        ]

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted federated accuracy from *verified* evaluation replies only.

        A reply counts when it comes from a node asked to evaluate (once), carries a valid
        signed eval record from the client bound to that node whose numbers equal the metrics,
        and its numbers are sane (finite loss, accuracy in [0, 1], example count within the
        public cap). Everything else is recorded and ignored.
        """
        rec = self._current
        assert rec is not None
        n_tot, loss, acc = 0, 0.0, 0.0
        seen: set[int] = set()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            ev = ClientEvalRecord(node, str(node), "failed")
            rec.evals.append(ev)
            if not msg.has_error():
                ev.parts = reply_parts(msg.content)
            try:
                if node not in rec.eval_sampled:
                    raise WireError("sender was not asked to evaluate this round")
                if node in seen:
                    raise WireError("duplicate evaluation reply from this node")
                seen.add(node)
                r = parse_eval_reply(msg, max_examples=self.max_eval_examples)
                ev.client_id = r.client_id
                doc = self._check_record(
                    EVAL_FORMAT, r.record, r.signature, r.client_id, node, server_round
                )
                if (doc.get("num_examples"), doc.get("loss"), doc.get("accuracy")) != (
                    r.num_examples,
                    r.loss,
                    r.accuracy,
                ):
                    raise WireError("evaluation metrics do not match the signed record")
            except WireError as exc:
                ev.status = "failed" if msg.has_error() else "rejected"
                ev.reason = (str(exc).strip().splitlines() or ["error"])[0][:300]
                log.warning("round %d: evaluation reply ignored: %s", server_round, ev.reason)
                continue
            ev.record, ev.signature = r.record, r.signature.hex()
            ev.num_examples, ev.loss, ev.accuracy = r.num_examples, r.loss, r.accuracy
            if doc.get("status") == "refused":
                ev.status, ev.reason = "refused", str(doc.get("reason", ""))[:300]
                continue
            ev.status = "evaluated"
            if r.num_examples == 0:
                continue
            n_tot += r.num_examples
            loss += r.loss * r.num_examples
            acc += r.accuracy * r.num_examples
        if n_tot == 0:
            return None
        rec.federated_loss, rec.federated_accuracy, rec.eval_examples = (
            loss / n_tot,
            acc / n_tot,
            n_tot,
        )
        return MetricRecord({"loss": rec.federated_loss, "accuracy": rec.federated_accuracy})

    def summary(self) -> None:
        log.info(
            "EncryptedFedAvg: scheme=%s, %d values, %d of %d clients per round",
            self.params.scheme,
            self.params.num_values,
            self.sample_size,
            self.num_clients,
        )

    # -- driver -----------------------------------------------------------------------------
    def run(self, grid: Grid, num_rounds: int, first_round: int = 1) -> list[RoundRecord]:
        """Run rounds ``first_round..num_rounds``; stop early when every client is out of budget."""
        self.summary()
        for rnd in range(first_round, num_rounds + 1):
            if self.round_gate is not None and (why := self.round_gate(rnd)):
                self.stop_reason = why
                log.warning("stopping before round %d: %s", rnd, why)
                break
            t0 = time.perf_counter()
            msgs = list(self.configure_train(rnd, ArrayRecord(), ConfigRecord(), grid))
            replies = grid.send_and_receive(msgs, timeout=self.round_timeout)
            agg, _ = self.aggregate_train(rnd, replies)
            rec = self._current
            assert rec is not None
            refused = [c for c in rec.clients if c.status == "refused"]
            if agg is None:
                # Refusals alone (budget, policy, data checks) end the run: the devices decided.
                # A shortfall from failed or rejected replies is a failed run.
                graceful = bool(refused) and rec.accepted + len(refused) == len(rec.sampled)
                if graceful:
                    why_all = sorted({c.reason for c in refused})
                    more = f"; and {len(why_all) - 1} other reason(s)" if len(why_all) > 1 else ""
                    if rec.accepted == 0:
                        self.stop_reason = (
                            f"round {rnd}: every sampled client refused ({why_all[0]}{more})"
                        )
                    else:
                        self.stop_reason = (
                            f"round {rnd}: {len(refused)} of {len(rec.sampled)} clients refused"
                            f" ({why_all[0]}{more}); {rec.accepted} update(s) left, an aggregate"
                            f" needs at least {rec.needed}"
                        )
                else:
                    reasons = (
                        "; ".join(f"node {c.node_id}: {c.status} ({c.reason})" for c in rec.clients)
                        or "no replies"
                    )
                    self.stop_reason = (
                        f"round {rnd}: {rec.accepted} accepted updates, {rec.needed} needed"
                        f" ({reasons})"
                    )
                rec.seconds = time.perf_counter() - t0
                self.history.append(rec)
                if self.on_round:
                    self.on_round(rec, None)
                if graceful:
                    log.warning("%s; stopping", self.stop_reason)
                    break
                raise RunFailedError(self.stop_reason)
            if self.threshold is not None and not self.decrypt_round(rnd, grid, rec):
                # Recorded; the previous global model stays and nothing is retrained.
                rec.seconds = time.perf_counter() - t0
                self.history.append(rec)
                if self.on_round:
                    self.on_round(rec, None)
                raise RunFailedError(self.stop_reason)
            ev_msgs = list(self.configure_evaluate(rnd, ArrayRecord(), ConfigRecord(), grid))
            if ev_msgs:
                self.aggregate_evaluate(
                    rnd, grid.send_and_receive(ev_msgs, timeout=self.round_timeout)
                )
            rec.seconds = time.perf_counter() - t0
            self.history.append(rec)
            if self.on_round:
                self.on_round(rec, self.global_blob)
        return self.history

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self._rng.getstate()}
