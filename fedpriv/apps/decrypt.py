"""A client's side of threshold decryption: check the request, then partially decrypt (or refuse).

Under threshold custody (``encryption.key_custody = "threshold"``) the server asks T clients
(the set P) for partial decryptions of a round's aggregate. The request is the server's claim;
before its share touches the aggregate the device checks, and refuses with a signed, recorded
reason otherwise, that:

1. the run's request passes its own policy (custody, decryption check, modes...);
2. it is a member of P and P is a valid set of T share indices;
3. the request carries at least k_min distinct signed update records of this run and round,
   each from a distinct registered client and each verifying with that client's identity key,
   and exactly as many as the aggregate declares summands (a "count 1" request, or records that
   do not add up, is refused: that is a request for one client's ciphertext);
4. its own update of this round, if it trained, is among them with its own digest;
5. ``decryption_check = "rebuild"``: the round's signed updates came along, match their
   records' digests, and sum exactly to the aggregate (a server cannot substitute one client's
   ciphertext for the aggregate, whatever count it declares);
6. this key's decryption budget D is not spent on this device.

It then masks its partial decryption with a pad only the clients can derive (so the server
learns nothing from what it relays and combines), counts it against D *before* it leaves, and
signs a decrypt record binding the run, round, P, the aggregate's digest and the partial's.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message

from fedpriv.apps.client import (
    ClientSettings,
    _client_id,
    _codec,
    _identity,
    _load_state,
    _request_config,
)
from fedpriv.config import RunConfig
from fedpriv.crypto.identity import IdentityRegistry, sign_record
from fedpriv.crypto.tcustody import DecryptionCounter, ThresholdKeyHolder, load_share, masks_for
from fedpriv.errors import ConfigError, CryptoError, VerificationError, WireError
from fedpriv.privacy.ledger import DECRYPT_FORMAT, RECORD_FORMAT, make_record, parse_record
from fedpriv.privacy.policy import DevicePolicy
from fedpriv.protocol import (
    DecryptReply,
    DecryptRequest,
    Instruction,
    build_decrypt_reply,
    parse_decrypt_request,
)

__all__ = ["check_decrypt_request", "handle_decrypt"]

log = logging.getLogger("fedpriv.client")
_COUNTER_KEY = "fedpriv-decryptions"
REGISTRY_FILE = "identities.json"


@functools.lru_cache(maxsize=8)
def _registry(path: str) -> IdentityRegistry:
    return IdentityRegistry.load(Path(path))


@dataclass
class _Check:
    """What the device found out about one request (what its signed record will say)."""

    refusal: str = ""
    index: int = 0
    count: int = 0
    records_checked: int = 0
    own_update: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def check_decrypt_request(
    req: DecryptRequest,
    cfg: RunConfig,
    *,
    holder: ThresholdKeyHolder,
    registry: IdentityRegistry,
    client_id: str,
    k_min: int,
    own_record: dict[str, Any] | None,
    require_rebuild: bool,
) -> _Check:
    """Every check of the module docstring that needs no key share; ``refusal`` says why not.

    ``own_record`` is this device's signed record of the request's run and round, if it sent
    one (it must then be among the records, with the same update digest).
    """
    from fedpriv.crypto.threshold import ThresholdAggregator, aggregate_count

    pub = holder.pub
    p = pub.params
    out = _Check()
    index = pub.index_of(client_id)
    if index is None:
        out.refusal = f"{client_id} holds no key share: it cannot decrypt"
        return out
    out.index = index
    ps = req.participants
    if len(ps) != p.threshold or len(set(ps)) != len(ps) or index not in ps:
        out.refusal = (
            f"the participant set {list(ps)} is not {p.threshold} distinct share holders "
            f"including this device (index {index})"
        )
        return out
    try:
        out.count = aggregate_count(p, req.aggregate, pub.key_id)
    except WireError as exc:
        raise WireError(f"decryption request: {exc}") from None
    if out.count < k_min:
        out.refusal = (
            f"decryption refused: the aggregate sums {out.count} update(s), this device requires "
            f"at least {k_min}"
            + (" (a request for one client's ciphertext)" if out.count == 1 else "")
        )
        return out
    seen: set[str] = set()
    digests: list[str] = []
    for r in req.records:
        why = _record_problem(r.client_id, r.record, r.signature, registry, req, seen)
        if why:
            out.refusal = f"decryption refused: {why}"
            return out
        doc = json.loads(r.record)
        seen.add(r.client_id)
        digests.append(str(doc["update_sha256"]))
    out.records_checked = len(seen)
    if len(seen) < k_min:
        out.refusal = (
            f"decryption refused: {len(seen)} valid signed update record(s) of round "
            f"{req.server_round}, this device requires at least {k_min}"
        )
        return out
    if len(seen) != out.count:
        out.refusal = (
            f"decryption refused: the aggregate declares {out.count} summands but the request "
            f"carries {len(seen)} signed update records (they do not add up)"
        )
        return out
    if own_record is not None:
        out.own_update = str(own_record.get("update_sha256", ""))
        mine = [
            str(json.loads(r.record)["update_sha256"])
            for r in req.records
            if r.client_id == client_id
        ]
        if mine != [out.own_update]:
            out.refusal = (
                f"decryption refused: this device trained in round {req.server_round} but its "
                "update is not in the aggregate (or another update is under its name)"
            )
            return out
    mode = cfg.encryption.decryption_check
    if require_rebuild and mode != "rebuild":
        out.refusal = "decryption refused: this device decrypts only aggregates it rebuilt"
        return out
    if mode == "rebuild":
        if len(req.updates) != len(req.records):
            out.refusal = (
                f"decryption refused: decryption_check='rebuild' but the request carries "
                f"{len(req.updates)} update(s) for {len(req.records)} record(s)"
            )
            return out
        agg = ThresholdAggregator(p, pub.key_id)
        for blob, want in zip(req.updates, digests, strict=True):
            if hashlib.sha256(blob).hexdigest() != want:
                out.refusal = "decryption refused: an update does not match its signed record"
                return out
            try:
                agg.add(blob)
            except WireError as exc:
                out.refusal = f"decryption refused: a signed update is malformed ({exc})"
                return out
        if agg.result() != req.aggregate:
            out.refusal = (
                "decryption refused: the aggregate is not the sum of the round's signed updates "
                "(substituted or altered by the server)"
            )
            return out
        out.details["rebuilt"] = True
    return out


def _record_problem(
    client_id: str,
    record: str,
    signature: bytes,
    registry: IdentityRegistry,
    req: DecryptRequest,
    seen: set[str],
) -> str:
    """Why one signed update record does not count ("" when it does)."""
    from fedpriv.privacy.ledger import record_digest

    if client_id in seen:
        return f"two records from {client_id!r}"
    try:
        doc = parse_record(record, RECORD_FORMAT, source="update record")
        registry.verify_record(client_id, record_digest(record), signature)
    except (VerificationError, WireError) as exc:
        return f"record of {client_id!r} does not verify ({exc})"
    for key, want in (
        ("run_id", req.run_id),
        ("round", req.server_round),
        ("client_id", client_id),
    ):
        if doc.get(key) != want:
            return f"record of {client_id!r} is for {key} {doc.get(key)!r}, not {want!r}"
    digest = doc.get("update_sha256")
    if doc.get("status") != "trained" or not isinstance(digest, str) or len(digest) != 64:
        return f"record of {client_id!r} is not a delivered update"
    return ""


def _request_registry(
    req: DecryptRequest, settings: ClientSettings, context: Context
) -> IdentityRegistry:
    """The registry to check records with: the dealer-signed one the request carries when this
    device has a bundle to verify it with (deployment), else the one dealt with its keys."""
    bundle = str(context.node_config.get("bundle", "") or "")
    if req.registry_proof is not None and bundle:
        from fedpriv.deploy.threshold import verified_registry

        return IdentityRegistry.from_openssh(verified_registry(Path(bundle), req.registry_proof))
    try:
        return _registry(str(settings.key_dir / REGISTRY_FILE))
    except CryptoError as exc:
        raise ConfigError(f"threshold custody needs the identity registry: {exc}") from None


def _own_record(state: Any, run_id: str, server_round: int) -> dict[str, Any] | None:
    """This device's signed record of ``server_round`` in ``run_id`` if it trained then."""
    head = state.run(run_id).head_record
    if not head:
        return None
    doc = json.loads(head)
    if doc.get("round") == server_round and doc.get("status") == "trained":
        return dict(doc)
    return None


def _counter(settings: ClientSettings, context: Context) -> DecryptionCounter:
    rec = context.state.config_records.get(_COUNTER_KEY)
    fallback = str(rec.get("json", "")) if rec is not None else ""
    return DecryptionCounter.load(settings.state_dir(context), fallback)


def handle_decrypt(msg: Message, context: Context, settings: ClientSettings) -> Message:
    """Answer a partial-decryption request (see the module docstring)."""
    from fedpriv.crypto.threshold import aggregate_digest

    codec = _codec(str(settings.key_dir))
    holder = codec.holder
    if not isinstance(holder, ThresholdKeyHolder):
        raise WireError("decryption request, but this client's keys are not threshold custody")
    pub = holder.pub
    p = pub.params
    req = parse_decrypt_request(msg.content, max_blob_bytes=p.max_blob_bytes + 64)
    if req.params_fingerprint != p.fingerprint():
        raise CryptoError("the server's parameters do not match this client's keys")
    ins = Instruction(req.server_round, req.config_json, req.params_fingerprint, None, req.run_id)
    cfg, refusal = _request_config(ins)
    policy = settings.policy or DevicePolicy.from_config(cfg)
    cid = _client_id(context)
    chk = _Check(refusal=refusal)
    counter = _counter(settings, context)
    if not chk.refusal:
        violations = policy.review(cfg)
        if cfg.encryption.key_custody != "threshold":
            violations.append("a decryption request in a run that is not threshold custody")
        chk.refusal = "policy: " + "; ".join(violations) if violations else ""
    if not chk.refusal:
        registry = _request_registry(req, settings, context)
        state = _load_state(cfg, settings, context)
        chk = check_decrypt_request(
            req,
            cfg,
            holder=holder,
            registry=registry,
            client_id=cid,
            k_min=policy.limits(cfg).k_min,
            own_record=_own_record(state, req.run_id, req.server_round),
            require_rebuild=policy.require_rebuilt_aggregate,
        )
    if not chk.refusal and counter.used(pub.key_id) >= p.max_decryptions:
        chk.refusal = (
            f"decryption refused: this device already made {counter.used(pub.key_id)} partial "
            f"decryptions with this key, its budget D = {p.max_decryptions}: re-deal the key"
        )
    partial = None
    digest = aggregate_digest(req.aggregate)
    if not chk.refusal:
        share = load_share(settings.key_dir, cid, pub)
        mask = masks_for(p, holder.mask_key, digest, req.participants)[share.index]
        try:
            partial = share.partial_decrypt(
                req.aggregate, req.participants, mask, min_count=policy.limits(cfg).k_min
            )
        except CryptoError as exc:
            chk.refusal = f"decryption refused: {exc}"
            partial = None
    used = counter.used(pub.key_id)
    if partial is not None:
        # Count it before it leaves: a partial lost on the way still spent the budget.
        used = counter.charge(pub.key_id)
        context.state.config_records[_COUNTER_KEY] = ConfigRecord({"json": counter.to_json()})
    else:
        log.warning("client %s: %s", cid, chk.refusal)
    fields = {
        "run_id": req.run_id,
        "round": req.server_round,
        "client_id": cid,
        "node_id": int(context.node_id),
        "status": "refused" if partial is None else "decrypted",
        "reason": chk.refusal,
        "key_id": pub.key_id.hex(),
        "party": chk.index,
        "participants": sorted(req.participants),
        "aggregate_sha256": digest.hex(),
        "aggregate_count": chk.count,
        "records_checked": chk.records_checked,
        "check": "rebuild" if chk.details.get("rebuilt") else "records",
        "partial_sha256": hashlib.sha256(partial).hexdigest() if partial is not None else "",
        "decryptions_used": used,
        "max_decryptions": p.max_decryptions,
    }
    record, rdigest = make_record(DECRYPT_FORMAT, fields)
    signature = sign_record(_identity(settings, context), rdigest)
    reply = DecryptReply(cid, record, signature, partial, chk.refusal if partial is None else "")
    return Message(build_decrypt_reply(reply), reply_to=msg)
