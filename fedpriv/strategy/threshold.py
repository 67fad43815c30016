"""The server's decryption phase under threshold custody (part of :class:`EncryptedFedAvg`).

After a round's updates are summed, the aggregate must be decrypted by T share holders before
anyone can train from it. The server:

1. fixes a participant set P of T share holders: first those that delivered an update this
   round, then other connected share holders it knows from this run (random order);
2. sends each member a ``train.decrypt`` request: the aggregate, P, and the signed records of
   the updates it sums (``decryption_check = "rebuild"``: the updates too);
3. verifies every reply (sender, signed decrypt record bound to this run, round, node, P, the
   aggregate's digest and the partial's) and each partial's frame on its own, so a bad one is
   attributed to its sender;
4. if a member refused, failed or did not answer, asks a new P without it (each request
   counts against the key's decryption budget D); below T available holders the round fails:
   it is recorded, the previous global model stays, and the run stops (the clients' epsilon for
   the round was charged once, when they trained; nothing is retrained);
5. sums the T masked partials with the aggregate's c0 (public operations only). The result is
   uniformly random to the server; it becomes the next instruction's global model, which every
   client finishes with the federation mask key.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flwr.app import Message
from flwr.serverapp import Grid

from fedpriv.errors import CryptoError, WireError
from fedpriv.privacy.ledger import DECRYPT_FORMAT
from fedpriv.protocol import (
    DECRYPT_MESSAGE_TYPE,
    DecryptRequest,
    SignedUpdateRecord,
    build_decrypt_request,
    parse_decrypt_reply,
    reply_parts,
)

if TYPE_CHECKING:
    import random

    from fedpriv.crypto.tcustody import ThresholdPublic

__all__ = ["DecryptReplyRecord", "DecryptionRecord", "ThresholdDecryption"]

log = logging.getLogger("fedpriv.server")


@dataclass
class DecryptReplyRecord:
    """One member of P answering (or not) one decryption request."""

    attempt: int
    node_id: int
    client_id: str
    status: str
    """decrypted | refused | rejected | failed"""
    reason: str = ""
    record: str = ""
    """The client's signed decrypt record (JSON text, exactly as signed)."""
    signature: str = ""
    bytes_down: int = 0
    bytes_up: int = 0
    parts: list[tuple[str, int, str]] = field(default_factory=list)


@dataclass
class DecryptionRecord:
    """A round's decryption phase, as the server ran it."""

    status: str = "pending"
    """decrypted | failed"""
    reason: str = ""
    threshold: int = 0
    attempts: list[list[str]] = field(default_factory=list)
    """The participant set (client ids) of each request, in order."""
    replies: list[DecryptReplyRecord] = field(default_factory=list)
    participants: list[str] = field(default_factory=list)
    """The set whose partials were combined."""
    check: str = "records"
    aggregate_sha256: str = ""
    aggregate_bytes: int = 0
    combined_sha256: str = ""
    combined_bytes: int = 0
    request_bytes: int = 0
    """What one member of P downloads per request (aggregate, records, updates)."""
    partial_bytes: int = 0
    seconds: float = 0.0
    aggregate: bytes | None = None
    """The aggregate ciphertext (the recorder stores it next to the combined blob)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "reason": self.reason,
            "threshold": self.threshold,
            "requests": len(self.attempts),
            "attempts": self.attempts,
            "participants": self.participants,
            "check": self.check,
            "aggregate_sha256": self.aggregate_sha256,
            "aggregate_bytes": self.aggregate_bytes,
            "combined_sha256": self.combined_sha256,
            "combined_bytes": self.combined_bytes,
            "request_bytes": self.request_bytes,
            "partial_bytes": self.partial_bytes,
            "seconds": self.seconds,
            "replies": {
                f"{r.attempt}:{r.client_id}": {
                    "node_id": r.node_id,
                    "status": r.status,
                    "reason": r.reason,
                    "bytes_up": r.bytes_up,
                    "bytes_down": r.bytes_down,
                }
                for r in self.replies
            },
        }


class ThresholdDecryption:
    """Mixin: the decryption phase of :class:`~fedpriv.strategy.core.EncryptedFedAvg`."""

    # Set by EncryptedFedAvg.__init__ (and its run loop).
    threshold: ThresholdPublic | None
    run_id: str
    config_json: str
    round_timeout: float
    global_blob: bytes | None
    aggregate_blob: bytes | None
    decryptions: int
    decryption_check: str
    stop_reason: str
    _rng: random.Random
    _node_of: dict[str, int]
    _round_updates: list[bytes]
    registry_proof: tuple[str, str, bytes] | None = None
    """Deployment: the server bundle's dealer-signed identity registry (sent with requests)."""

    def _check_record(
        self, fmt: str, record: str, signature: bytes, client_id: str, node: int, rnd: int
    ) -> dict[str, Any]:
        raise NotImplementedError  # EncryptedFedAvg's

    def _round_records(self, rec: Any) -> list[Any]:
        return [c for c in rec.clients if c.status == "accepted"]

    # -- requests ----------------------------------------------------------------------------
    def decrypt_request(
        self,
        server_round: int,
        aggregate: bytes,
        participants: tuple[int, ...],
        accepted: list[Any],
    ) -> DecryptRequest:
        """What every member of P receives (an adversarial server overrides this)."""
        assert self.threshold is not None
        records = tuple(
            SignedUpdateRecord(c.client_id, c.record, bytes.fromhex(c.signature)) for c in accepted
        )
        updates = tuple(self._round_updates) if self.decryption_check == "rebuild" else ()
        return DecryptRequest(
            server_round,
            self.run_id,
            self.config_json,
            self.threshold.params.fingerprint(),
            aggregate,
            participants,
            records,
            updates,
            self.registry_proof,
        )

    def configure_decrypt(
        self, server_round: int, members: list[tuple[int, str]], req: DecryptRequest
    ) -> list[Message]:
        content = build_decrypt_request(req)
        return [
            Message(content=content, dst_node_id=n, message_type=DECRYPT_MESSAGE_TYPE)
            for n, _ in members
        ]

    def aggregate_decrypt(
        self,
        server_round: int,
        members: list[tuple[int, str]],
        req: DecryptRequest,
        replies: Iterable[Message],
        dec: DecryptionRecord,
    ) -> dict[int, bytes]:
        """Verified partials by node; every reply (and every silent member) is recorded."""
        from fedpriv.crypto.threshold import aggregate_digest, partial_info

        assert self.threshold is not None
        pub = self.threshold
        attempt = len(dec.attempts) - 1
        want = dict(members)
        digest = aggregate_digest(req.aggregate)
        ps = tuple(sorted(req.participants))
        got: dict[int, bytes] = {}
        seen: set[int] = set()
        for msg in replies:
            node = int(msg.metadata.src_node_id)
            r = DecryptReplyRecord(attempt, node, want.get(node, str(node)), "failed")
            r.bytes_down = dec.request_bytes
            dec.replies.append(r)
            if not msg.has_error():
                r.parts = reply_parts(msg.content)
            try:
                if node not in want:
                    raise WireError("sender was not asked to decrypt")
                if node in seen:
                    raise WireError("duplicate decryption reply from this node")
                seen.add(node)
                rep = parse_decrypt_reply(msg, max_blob_bytes=pub.params.max_blob_bytes)
                if rep.client_id != want[node]:
                    raise WireError(f"node {node} answers as {rep.client_id!r}, not {want[node]!r}")
                doc = self._check_record(
                    DECRYPT_FORMAT, rep.record, rep.signature, rep.client_id, node, server_round
                )
                r.record, r.signature = rep.record, rep.signature.hex()
                if doc.get("aggregate_sha256") != digest.hex() or doc.get("participants") != list(
                    ps
                ):
                    raise WireError("the signed decrypt record is for another aggregate or set")
                if rep.partial is None:
                    r.status, r.reason = "refused", rep.refusal
                    continue
                r.bytes_up = len(rep.partial)
                if (
                    doc.get("status") != "decrypted"
                    or doc.get("partial_sha256") != hashlib.sha256(rep.partial).hexdigest()
                ):
                    raise WireError("the partial decryption does not match the signed record")
                info = partial_info(pub.params, rep.partial, pub.key_id)
                if (
                    info.party != pub.index_of(rep.client_id)
                    or info.participants != ps
                    or not info.masked
                    or info.aggregate_digest != digest
                ):
                    raise WireError("the partial decryption is bound to another party, set or key")
            except WireError as exc:
                r.status = "failed" if msg.has_error() else "rejected"
                r.reason = (str(exc).strip().splitlines() or ["error"])[0][:300]
                r.record = r.record if r.status == "rejected" else ""
                log.warning("round %d: decryption reply from node %d: %s", server_round, node, exc)
                continue
            r.status = "decrypted"
            got[node] = rep.partial
        for node, cid in members:
            if node not in seen:
                dec.replies.append(
                    DecryptReplyRecord(
                        attempt, node, cid, "failed", "no reply before the timeout", bytes_down=0
                    )
                )
        return got

    # -- the phase ---------------------------------------------------------------------------
    def _share_holders(self, accepted: list[Any], online: set[int]) -> list[tuple[int, str]]:
        """Connected share holders: this round's contributors first, then others (shuffled)."""
        assert self.threshold is not None
        pub = self.threshold
        first = [
            (self._node_of[c.client_id], c.client_id)
            for c in accepted
            if pub.index_of(c.client_id) is not None and c.client_id in self._node_of
        ]
        firsts = {cid for _, cid in first}
        rest = [
            (n, cid)
            for cid, n in self._node_of.items()
            if cid not in firsts and pub.index_of(cid) is not None
        ]
        self._rng.shuffle(first)
        self._rng.shuffle(rest)
        return [m for m in first + rest if m[0] in online]

    def decrypt_round(self, server_round: int, grid: Grid, rec: Any) -> bool:
        """Run the decryption phase; True when the combined blob is the new global model."""
        from fedpriv.crypto.threshold import aggregate_digest, combine_partials

        assert self.threshold is not None and self.aggregate_blob is not None
        pub = self.threshold
        t = pub.params.threshold
        t0 = time.perf_counter()
        aggregate = self.aggregate_blob
        dec = DecryptionRecord(threshold=t, check=self.decryption_check, aggregate=aggregate)
        dec.aggregate_sha256 = aggregate_digest(aggregate).hex()
        dec.aggregate_bytes = len(aggregate)
        rec.decryption = dec
        accepted = self._round_records(rec)
        pool = self._share_holders(accepted, {int(n) for n in grid.get_node_ids()})
        excluded: set[int] = set()
        while True:
            avail = [m for m in pool if m[0] not in excluded]
            if len(avail) < t:
                dec.status = "failed"
                dec.reason = (
                    f"decryption failed: {len(avail)} share holder(s) available to decrypt, "
                    f"the threshold is {t} (the previous global model stays)"
                )
                break
            if self.decryptions >= pub.params.max_decryptions:
                dec.status = "failed"
                dec.reason = (
                    f"decryption failed: the key's decryption budget D = "
                    f"{pub.params.max_decryptions} is spent: re-deal the key"
                )
                break
            members = avail[:t]
            indices = tuple(sorted(int(pub.parties[cid]) for _, cid in members))
            req = self.decrypt_request(server_round, aggregate, indices, accepted)
            dec.request_bytes = (
                len(req.aggregate)
                + sum(len(u) for u in req.updates)
                + sum(len(r.record) + len(r.signature) for r in req.records)
            )
            dec.attempts.append([cid for _, cid in members])
            self.decryptions += 1
            msgs = self.configure_decrypt(server_round, members, req)
            replies = grid.send_and_receive(msgs, timeout=self.round_timeout)
            got = self.aggregate_decrypt(server_round, members, req, replies, dec)
            excluded.update(n for n, _ in members if n not in got)
            if len(got) < t:
                log.warning(
                    "round %d: %d of %d partial decryptions; asking a new set",
                    server_round,
                    len(got),
                    t,
                )
                continue
            try:
                combined = combine_partials(
                    pub.params, aggregate, [got[n] for n, _ in members], pub.key_id
                )
            except (WireError, CryptoError) as exc:  # not expected after per-partial checks
                dec.status, dec.reason = "failed", f"decryption failed: {exc}"
                break
            dec.status = "decrypted"
            dec.participants = [cid for _, cid in members]
            dec.partial_bytes = len(got[members[0][0]])
            dec.combined_sha256 = hashlib.sha256(combined).hexdigest()
            dec.combined_bytes = len(combined)
            self.global_blob = combined
            rec.global_bytes = len(combined)
            break
        dec.seconds = time.perf_counter() - t0
        if dec.status != "decrypted":
            self.stop_reason = f"round {server_round}: {dec.reason}"
            log.warning("%s", self.stop_reason)
            return False
        return True
