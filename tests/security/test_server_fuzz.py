"""Fuzz the server's reply handling with real Flower messages and real BFV ciphertexts.

Every round mixes honest signed updates with mutated replies (truncated or bit-flipped blobs,
wrong parameters, huge declared sizes, empty payloads, bad metrics, forged, missing or replayed
signatures, records for another run, round or node, cross-client replays, unsampled or duplicate
senders). Each bad reply comes from its own node; most are signed by a registered client bound to
that node (a malicious but authenticated participant), so they reach the deeper checks. The server
must never crash, every bad reply must be left out with a reason, and the aggregate must equal
that of the honest updates alone.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedpriv.config import load_config
from fedpriv.crypto.codec import ClientCodec, load_params_file
from fedpriv.crypto.identity import (
    IdentityRegistry,
    generate_identity,
    load_private_identity,
    sign_record,
)
from fedpriv.keys import deal_keys
from fedpriv.privacy.ledger import RECORD_FORMAT, make_record, record_digest
from fedpriv.protocol import TrainReply, blob_to_record, build_train_reply, metrics_digest
from fedpriv.strategy import EncryptedFedAvg, RoundRecord

N_VALUES = 650
K = 4
ROUNDS = 30
BAD_PER_ROUND = 36  # 30 x 36 = 1,080 mutated replies
RUN = "run-under-test"
HONEST = list(range(100, 100 + K))
BAD = list(range(1000, 1000 + BAD_PER_ROUND))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("keys")
    # K honest clients and one registered (authenticated, malicious) client per bad node.
    n = K + BAD_PER_ROUND
    cfg = load_config(None, [f"federation.num_clients={n}", "train.model=logreg"])
    params = deal_keys(cfg, num_values=N_VALUES, max_weight=200, out=out)
    codec = ClientCodec.load(out / "client")
    ids = {
        f"client-{i}": load_private_identity(out / "client" / "identities" / f"client-{i}.pem")
        for i in range(n)
    }
    registry = IdentityRegistry.load(out / "server" / "identities.json")
    assert load_params_file(out / "server" / "params.json").fingerprint() == params.fingerprint()
    # A second key set with other parameters (weight bound): well-formed blobs, wrong fingerprint.
    other = tmp_path_factory.mktemp("other")
    deal_keys(cfg, num_values=N_VALUES, max_weight=100, out=other)
    return params, codec, ids, registry, ClientCodec.load(other / "client")


def _instruction(node: int) -> Message:
    return Message(
        content=RecordDict({"config": ConfigRecord({"x": 1})}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )


def _reply(node: int, r: TrainReply) -> Message:
    return Message(build_train_reply(r), reply_to=_instruction(node))


def _metrics(weight: int, blob: bytes, clipped: int = 0) -> dict[str, float | int]:
    return {
        "num-examples": weight,
        "steps": 3,
        "clipped": clipped,
        "weight-used": weight,
        "refused": 0,
        "update-bytes": len(blob),
        "update-clipped": 0,
        "epsilon": 1.0,
        "noise-multiplier": 1.1,
        "sample-rate": 0.1,
        "train-loss": 0.5,
        "train-seconds": 0.1,
        "encrypt-seconds": 0.01,
        "client-epsilon": 0.0,
    }


def _signed(
    key,
    cid: str,
    node: int,
    rnd: int,
    blob: bytes | None,
    metrics: dict[str, float | int],
    *,
    run: str = RUN,
    status: str = "",
    digest: str | None = None,
    size: int | None = None,
) -> TrainReply:
    """A reply whose client record is signed by ``key`` (the way fedpriv's client signs)."""
    import hashlib

    fields = {
        "run_id": run,
        "round": rnd,
        "client_id": cid,
        "node_id": node,
        "seq": 0,
        "prev": "0" * 64,
        "status": status or ("trained" if blob is not None else "refused"),
        "reason": "",
        "event": [1.1, 0.1, 3],
        "history": [[1.1, 0.1, 3]],
        "epsilon": 1.0,
        "update_sha256": digest
        if digest is not None
        else (hashlib.sha256(blob).hexdigest() if blob is not None else ""),
        "update_bytes": size if size is not None else (len(blob) if blob is not None else 0),
        "metrics_sha256": metrics_digest(metrics),
    }
    record, d = make_record(RECORD_FORMAT, fields)
    return TrainReply(metrics, blob, "", cid, record, sign_record(key, d))


def _honest(codec, key, cid: str, node: int, rnd: int, values: np.ndarray, w: int) -> TrainReply:
    upd = codec.encode(values, w)
    return _signed(key, cid, node, rnd, upd.blob, _metrics(w, upd.blob, upd.clipped))


def _mutation(rng: random.Random, good: TrainReply, honest_key, other: TrainReply, bad, rnd: int):
    """One bad reply from a bad node: (label, TrainReply or None for a broken record)."""
    blob = good.blob
    assert blob is not None
    key, cid, node = bad
    kind = rng.randrange(19)
    m = dict(good.metrics)

    def with_blob(b: bytes, label: str):
        return label, _signed(key, cid, node, rnd, b, dict(m, **{"update-bytes": len(b)}))

    if kind == 0:
        return with_blob(blob[: rng.randrange(0, len(blob))], "truncated")
    if kind == 1:
        b = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return with_blob(bytes(b), "bit flips (re-signed)")
    if kind == 2:
        return with_blob(b"", "empty payload")
    if kind == 3:
        b = bytearray(blob)
        pos = rng.randrange(4, min(64, len(b) - 4))
        b[pos : pos + 4] = b"\xff\xff\xff\x7f"
        return with_blob(bytes(b), "huge declared size")
    if kind == 4:
        return with_blob(other.blob or b"", "blob for other parameters")
    if kind == 5:
        return with_blob(blob + bytes(rng.randrange(1, 4096)), "trailing bytes")
    if kind == 6:
        ok = _signed(key, cid, node, rnd, blob, m)
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 0x10
        return "bit flip, old signature", TrainReply(m, bytes(b), "", cid, ok.record, ok.signature)
    if kind == 7:
        ok = _signed(key, cid, node, rnd, blob, m)
        return "no signature", TrainReply(m, blob, "", cid, ok.record, b"")
    if kind == 8:
        return "replay: signed for the previous round", _signed(key, cid, node, rnd - 1, blob, m)
    if kind == 9:
        return "replay: signed for another run", _signed(key, cid, node, rnd, blob, m, run="r2")
    if kind == 10:
        return "forged signature", _signed(generate_identity(), cid, node, rnd, blob, m)
    if kind == 11:
        return "unknown client id", _signed(key, "client-999", node, rnd, blob, m)
    if kind == 12:
        name = rng.choice(list(m))
        mm = dict(m)
        mm[name] = -1 if isinstance(m[name], int) else rng.choice([-1.0, math.inf, math.nan])
        if rng.random() < 0.5:
            return "bad metric value (re-signed)", _signed(key, cid, node, rnd, blob, mm)
        ok = _signed(key, cid, node, rnd, blob, m)
        return "bad metric (unsigned change)", TrainReply(
            mm, blob, "", cid, ok.record, ok.signature
        )
    if kind == 13:
        return "sha256 mismatch", _signed(key, cid, node, rnd, blob, m, digest="0" * 64)
    if kind == 14:
        return "declared size mismatch", _signed(key, cid, node, rnd, blob, m, size=len(blob) + 1)
    if kind == 15:
        # An honest client's exact signed reply, resent by another registered node.
        return "cross-client replay", good
    if kind == 16:
        # A record naming the honest client, signed by the bad client's own key.
        return "impersonation", _signed(key, good.client_id, node, rnd, blob, m)
    if kind == 17:
        return "status mismatch", _signed(key, cid, node, rnd, blob, m, status="refused")
    return "raw", None  # kind 18: structurally broken records, built below


def _broken_records(rng: random.Random, node: int, good_blob: bytes) -> Message:
    choice = rng.randrange(4)
    if choice == 0:
        rd = RecordDict({"metrics": MetricRecord({"num-examples": 3})})
    elif choice == 1:
        rd = RecordDict({"update": blob_to_record(good_blob)})
    elif choice == 2:
        rd = RecordDict(
            {"metrics": MetricRecord({"refused": 0}), "info": ConfigRecord({"refusal": 5})}
        )
    else:
        rd = RecordDict()
    return Message(rd, reply_to=_instruction(node))


@pytest.fixture(autouse=True)
def server_task_identity():
    """Messages are stamped with the process' task identity, as Flower's runtime sets it."""
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = old


def test_fuzzed_replies_never_crash_or_corrupt_the_sum(setup) -> None:
    params, codec, ids, registry, other_codec = setup
    rng = random.Random(1234)
    npr = np.random.default_rng(5)
    labels: dict[str, int] = {}
    total_bad = 0
    bad_clients = [(ids[f"client-{K + j}"], f"client-{K + j}", BAD[j]) for j in range(len(BAD))]
    pins = {f"client-{i}": HONEST[i] for i in range(K)}
    pins.update({cid: node for _, cid, node in bad_clients})
    for rnd in range(2, ROUNDS + 2):
        # Every reply comes from its own node, so each bad reply is validated on its own merits.
        strategy = EncryptedFedAvg(
            params,
            "{}",
            num_clients=K,
            min_train_clients=K,
            identities=registry,
            run_id=RUN,
            pinned_nodes=pins,  # as a deployment registers them
        )
        strategy._current = RoundRecord(rnd, HONEST + BAD)
        values = [npr.uniform(-1, 1, N_VALUES).astype(np.float32) for _ in range(K)]
        weights = [rng.randint(1, 200) for _ in range(K)]
        good = [
            _honest(codec, ids[f"client-{i}"], f"client-{i}", HONEST[i], rnd, values[i], weights[i])
            for i in range(K)
        ]
        other = _honest(other_codec, ids["client-0"], "client-0", HONEST[0], rnd, values[0], 1)
        msgs: list[Message] = [_reply(HONEST[i], good[i]) for i in range(K)]
        node_label: dict[int, str] = {}
        for j, node in enumerate(BAD):
            i = rng.randrange(K)
            label, bad = _mutation(rng, good[i], ids[f"client-{i}"], other, bad_clients[j], rnd)
            node_label[node] = label
            msgs.append(
                _broken_records(rng, node, good[i].blob or b"")
                if bad is None
                else _reply(node, bad)
            )
            labels[label] = labels.get(label, 0) + 1
        # a valid update from an unsampled node, and a second reply from an honest node
        msgs.append(_reply(999, good[0]))
        msgs.append(_reply(HONEST[1], good[1]))
        total_bad += BAD_PER_ROUND + 2
        # honest replies keep their place ahead of the duplicate; the rest arrive in any order
        tail = msgs[K:]
        rng.shuffle(tail)
        dup = next(m for m in tail if int(m.metadata.src_node_id) == HONEST[1])
        tail.remove(dup)
        order = msgs[:K]
        for m in tail:
            order.insert(rng.randrange(len(order) + 1), m)
        pos = max(i for i, m in enumerate(order) if int(m.metadata.src_node_id) == HONEST[1])
        order.insert(rng.randrange(pos + 1, len(order) + 1), dup)
        agg, _ = strategy.aggregate_train(rnd, order)
        rec = strategy._current
        assert rec is not None
        accepted = [c for c in rec.clients if c.status == "accepted"]
        assert agg is not None and rec.accepted == K, [
            (node_label.get(c.node_id), c.reason) for c in rec.clients if c.status != "accepted"
        ][:5]
        assert sorted(c.node_id for c in accepted) == HONEST, [
            node_label.get(c.node_id) for c in accepted
        ]
        bad_records = [c for c in rec.clients if c.status != "accepted"]
        assert len(bad_records) == BAD_PER_ROUND + 2
        assert all(c.reason for c in bad_records)
        # a record reaches the ledger only when its signature verified (a valid record whose
        # blob then failed validation is kept: that client was charged for training)
        for c in bad_records:
            if c.record:
                registry.verify_record(
                    c.client_id, record_digest(c.record), bytes.fromhex(c.signature)
                )
        mean, total_w, count = codec.decode(strategy.global_blob or b"")
        expected = sum(
            w * v.astype(np.float64) for w, v in zip(weights, values, strict=True)
        ) / sum(weights)
        assert count == K and total_w == sum(weights)
        assert np.abs(mean - expected).max() <= params.error_bound(sum(weights)) + 1e-6
    assert total_bad >= 1000
    assert len(labels) >= 18, labels


def test_cross_client_replay_is_rejected_and_not_summed_twice(setup) -> None:
    """A registered node resends another client's signed update in the same round (issue 10):
    without pinned nodes (simulation, bound on first contact) it is rejected, not summed twice."""
    params, codec, ids, registry, _ = setup
    strategy = EncryptedFedAvg(
        params, "{}", num_clients=2, min_train_clients=2, identities=registry, run_id=RUN
    )
    strategy._current = RoundRecord(2, [100, 101, 102])
    v = np.ones(N_VALUES, dtype=np.float32) * 0.25
    a = _honest(codec, ids["client-0"], "client-0", 100, 2, v, 10)
    b = _honest(codec, ids["client-1"], "client-1", 101, 2, v, 10)
    agg, _ = strategy.aggregate_train(2, [_reply(100, a), _reply(101, b), _reply(102, a)])
    rec = strategy._current
    assert agg is not None and rec.accepted == 2
    replay = next(c for c in rec.clients if c.node_id == 102)
    assert replay.status == "rejected" and "node" in replay.reason
    _, total_w, count = codec.decode(strategy.global_blob or b"")
    assert (count, total_w) == (2, 20)


def test_dealer_writes_owner_only_identity_keys(setup, tmp_path: Path) -> None:
    import os
    import stat

    cfg = load_config(None, ["federation.num_clients=2", "encryption.scheme=off"])
    deal_keys(cfg, num_values=10, max_weight=5, out=tmp_path)
    for i in range(2):
        p = tmp_path / "client" / "identities" / f"client-{i}.pem"
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    reg = IdentityRegistry.load(tmp_path / "server" / "identities.json")
    assert len(reg) == 2 and "PRIVATE" not in (tmp_path / "server" / "identities.json").read_text()
