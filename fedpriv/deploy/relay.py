"""Relay of sealed HE keys through the server (a Flower run of its own, ``fedpriv-task=relay-keys``).

Server side (:func:`serve_relay`): ask every allowed node who it is (a ``query`` message), send
each node the sealed blob the dealer made for its client id, record what was relayed (client,
node, size, SHA-256, and the opaque blob itself as an audit copy) in ``<run-dir>/relay/``.

Client side (:func:`handle_relay_query`): answer with its client id; open a delivered blob with
the node's identity key, accept it only when the dealer's signature and the federation, client,
node-key and parameter bindings check out, and store the HE secret owner-only in its key dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedpriv.errors import ConfigError, CryptoError, RunFailedError, WireError

__all__ = ["RELAY_KEY", "handle_relay_query", "serve_relay"]

log = logging.getLogger("fedpriv.deploy.relay")
RELAY_KEY = "fedpriv-relay"
_MAX_SEALED = 16 << 20


def _query(step: str, node: int, **fields: Any) -> Message:
    rec = ConfigRecord({"step": step, **fields})
    return Message(
        content=RecordDict({RELAY_KEY: rec}), dst_node_id=node, message_type=MessageType.QUERY
    )


def _reply_record(msg: Message) -> ConfigRecord:
    if msg.has_error():
        raise WireError(f"node replied with an error: {msg.error.reason}")
    rec = msg.content.config_records.get(RELAY_KEY)
    if rec is None:
        raise WireError("reply carries no relay record")
    return rec


def serve_relay(
    grid: Grid,
    bundle_dir: Path,
    run_dir: Path,
    *,
    node_wait_s: float,
    timeout_s: float,
    node_map: dict[str, int] | None = None,
) -> dict[str, str]:
    """Relay each sealed key in the server bundle to the node that claims its client id.

    Parameters
    ----------
    grid : Grid
        Flower grid (restricted to the registered nodes by the caller).
    bundle_dir : Path
        The server bundle (``relay/<client-id>.sealed``).
    run_dir : Path
        Where the relay log and audit copies go.
    node_wait_s, timeout_s : float
        How long to wait for nodes to connect, and for replies.
    node_map : dict, optional
        client id -> node id as ``fedpriv server start`` registered them; without it every
        node is first asked which client it is (one more round trip).

    Returns
    -------
    dict
        client id -> status (``stored``, ``unchanged``, or the failure reason).

    Raises
    ------
    RunFailedError
        A sealed key could not be delivered (its node never connected or refused it).
    """
    from fedpriv.deploy.bundle import verify_bundle
    from fedpriv.privacy.ledger import HashChainWriter

    bundle = verify_bundle(bundle_dir, kind="server")
    blobs = {
        Path(rel).stem: bundle.path(rel).read_bytes()
        for rel in bundle.meta["files"]
        if rel.startswith("relay/") and rel.endswith(".sealed")
    }
    out = run_dir / "relay"
    out.mkdir(parents=True, exist_ok=True)
    journal = HashChainWriter(run_dir / "relay.jsonl")
    if not blobs:
        log.info("relay: the server bundle holds no sealed keys; nothing to relay")
        return {}
    # Wait until as many nodes as sealed keys are connected (or the deadline passes).
    deadline = time.monotonic() + node_wait_s
    while len(list(grid.get_node_ids())) < len(blobs) and time.monotonic() < deadline:
        time.sleep(0.5)
    nodes = sorted(grid.get_node_ids())
    who: dict[str, int] = {}
    if node_map:
        # The registration says which node holds which client key; the node still checks that
        # the blob was sealed for its own client id and key before it accepts it.
        who = {cid: n for cid, n in node_map.items() if cid in blobs and n in set(nodes)}
        nodes = []
    for msg in grid.send_and_receive([_query("hello", n) for n in nodes], timeout=timeout_s):
        node = int(msg.metadata.src_node_id)
        try:
            rec = _reply_record(msg)
        except WireError as exc:
            log.warning("relay: node %d: %s", node, exc)
            continue
        cid = str(rec.get("client-id", ""))
        if cid in who:
            log.warning("relay: client id %r claimed by nodes %d and %d", cid, who[cid], node)
            continue
        who[cid] = node
    status: dict[str, str] = {}
    msgs = []
    for cid, blob in sorted(blobs.items()):
        if cid not in who:
            status[cid] = "its node is not connected"
            continue
        msgs.append(_query("deliver", who[cid], blob=blob))
        (out / f"{cid}.sealed").write_bytes(blob)
    replies = {
        int(m.metadata.src_node_id): m for m in grid.send_and_receive(msgs, timeout=timeout_s)
    }
    for cid, node in sorted(who.items()):
        if cid not in blobs:
            continue
        reply = replies.get(node)
        if reply is None:
            status[cid] = "no reply before the timeout"
            continue
        try:
            status[cid] = str(_reply_record(reply).get("status", "no status"))
        except WireError as exc:
            status[cid] = str(exc)
    for cid, blob in sorted(blobs.items()):
        journal.append(
            {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "client_id": cid,
                "node_id": who.get(cid),
                "kind": "sealed-he-key",
                "bytes": len(blob),
                "sha256": hashlib.sha256(blob).hexdigest(),
                "status": status[cid],
            }
        )
    bad = {c: s for c, s in status.items() if s not in ("stored", "unchanged")}
    if bad:
        raise RunFailedError(
            "key relay incomplete: "
            + "; ".join(f"{c}: {s}" for c, s in sorted(bad.items()))
            + " (start those clients with `fedpriv client start` and run again)"
        )
    return status


def _node_setting(context: Context, key: str) -> str:
    value = str(context.node_config.get(key, "") or "")
    if not value:
        raise ConfigError(
            f"client: node config {key!r} is missing (start the node with `fedpriv client start`)"
        )
    return value


def handle_relay_query(msg: Message, context: Context) -> Message:
    """ClientApp ``query`` handler for the key relay."""
    from fedpriv.crypto import KeyHolder
    from fedpriv.crypto.codec import load_params_file
    from fedpriv.deploy.bundle import verify_bundle
    from fedpriv.deploy.pki import load_dealer_public, load_node_private, node_key_fingerprint
    from fedpriv.deploy.seal import SealContext, open_sealed

    rec = msg.content.config_records.get(RELAY_KEY)
    if rec is None:
        raise WireError("query message is not a fedpriv key relay request")
    bundle = verify_bundle(Path(_node_setting(context, "bundle")), kind="client")
    cid = str(bundle.meta["client_id"])
    key_dir = Path(_node_setting(context, "keys-dir"))
    node_key = load_node_private(Path(_node_setting(context, "node-key")).read_bytes())
    secret = key_dir / "secret.key"
    step = str(rec.get("step", ""))
    if step == "hello":
        reply = ConfigRecord(
            {
                "client-id": cid,
                "node-key": node_key_fingerprint(node_key.public_key()),
                "has-secret": secret.exists() or (key_dir / "mask.key").exists(),
            }
        )
    elif step == "deliver":
        blob = rec.get("blob", b"")
        if not isinstance(blob, bytes) or not 0 < len(blob) <= _MAX_SEALED:
            raise WireError("relay: delivered blob is missing or too large")
        params = load_params_file(key_dir / "params.json")
        plain = open_sealed(
            blob,
            node_key,
            load_dealer_public(bundle.path("dealer.pub").read_bytes()),
            SealContext(bundle.federation, cid, params.fingerprint()),
        )
        if bundle.meta.get("key_custody") == "threshold":
            from fedpriv.deploy.threshold import store_sealed_keys

            status = store_sealed_keys(plain, key_dir, cid)  # share (if any) and mask key
            log.info("client %s: sealed threshold keys %s", cid, status)
            reply = ConfigRecord({"status": status, "params-fingerprint": params.fingerprint()})
            return Message(RecordDict({RELAY_KEY: reply}), reply_to=msg)
        holder = KeyHolder.from_bytes(plain)
        if holder.params.fingerprint() != params.fingerprint():
            raise CryptoError("relay: the sealed key belongs to other HE parameters")
        if secret.exists() and KeyHolder.load(secret).to_bytes() == plain:
            status = "unchanged"
        else:
            holder.save(secret)
            status = "stored"
        log.info("client %s: sealed HE key %s", cid, status)
        reply = ConfigRecord({"status": status, "params-fingerprint": params.fingerprint()})
    else:
        raise WireError(f"relay: unknown step {step!r}")
    return Message(RecordDict({RELAY_KEY: reply}), reply_to=msg)


def relay_summary(run_dir: Path) -> list[dict[str, Any]]:
    """Entries of ``<run-dir>/relay.jsonl`` (for reports)."""
    path = run_dir / "relay.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
