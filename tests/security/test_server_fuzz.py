"""Fuzz the server's reply handling with real Flower messages and real BFV ciphertexts.

Every round mixes honest signed updates with mutated replies (truncated or bit-flipped blobs,
wrong parameters, huge declared sizes, empty payloads, bad metrics, forged, missing or replayed
signatures, unsampled or duplicate senders). The server must never crash, every bad reply must
be left out with a reason, and the aggregate must equal that of the honest updates alone.
"""

from __future__ import annotations

import hashlib
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
    sign_update,
)
from fedpriv.keys import deal_keys
from fedpriv.protocol import TrainReply, blob_to_record, build_train_reply, metrics_digest
from fedpriv.strategy import EncryptedFedAvg, RoundRecord

N_VALUES = 650
K = 4
ROUNDS = 30
BAD_PER_ROUND = 36  # 30 x 36 = 1,080 mutated replies


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("keys")
    cfg = load_config(None, [f"federation.num_clients={K}", "train.model=logreg"])
    params = deal_keys(cfg, num_values=N_VALUES, max_weight=200, out=out)
    codec = ClientCodec.load(out / "client")
    ids = {
        f"client-{i}": load_private_identity(out / "client" / "identities" / f"client-{i}.pem")
        for i in range(K)
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


def _honest(
    codec, key, cid: str, run_id: str, rnd: int, values: np.ndarray, weight: int
) -> TrainReply:
    upd = codec.encode(values, weight)
    digest = hashlib.sha256(upd.blob).hexdigest()
    metrics: dict[str, float | int] = {
        "num-examples": weight,
        "steps": 3,
        "clipped": upd.clipped,
        "weight-used": upd.weight_used,
        "refused": 0,
        "update-bytes": len(upd.blob),
        "update-clipped": 0,
        "epsilon": 1.0,
        "noise-multiplier": 1.1,
        "sample-rate": 0.1,
        "train-loss": 0.5,
        "train-seconds": 0.1,
        "encrypt-seconds": 0.01,
        "client-epsilon": 0.0,
    }
    sig = sign_update(key, run_id, rnd, cid, f"{digest}:{metrics_digest(metrics)}")
    return TrainReply(metrics, upd.blob, "", digest, "[]", cid, sig)


def _mutations(rng: random.Random, good: TrainReply, other: TrainReply, key, run_id: str, rnd: int):
    """Yield (label, node offset, reply or raw message builder) for one bad reply."""
    blob = good.blob
    assert blob is not None
    kind = rng.randrange(16)
    m = dict(good.metrics)

    def resign(
        b: bytes, cid: str = good.client_id, r: int = rnd, run: str = run_id, mm: dict | None = None
    ) -> tuple[str, bytes]:
        d = hashlib.sha256(b).hexdigest()
        return d, sign_update(
            key, run, r, cid, f"{d}:{metrics_digest(mm if mm is not None else m)}"
        )

    def with_blob(b: bytes, label: str):
        mm = dict(m, **{"update-bytes": len(b)})
        d, s = resign(b, mm=mm)
        return label, TrainReply(mm, b, "", d, "[]", good.client_id, s)

    if kind == 0:
        cut = rng.randrange(0, len(blob))
        return with_blob(blob[:cut], "truncated")
    if kind == 1:
        b = bytearray(blob)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return with_blob(bytes(b), "bit flips (re-signed)")
    if kind == 2:
        return with_blob(b"", "empty payload")
    if kind == 3:
        b = bytearray(blob)
        # declared ciphertext count / length fields live in the header: make them huge
        pos = rng.randrange(4, min(64, len(b) - 4))
        b[pos : pos + 4] = b"\xff\xff\xff\x7f"
        return with_blob(bytes(b), "huge declared size")
    if kind == 4:
        return with_blob(other.blob or b"", "blob for other parameters")
    if kind == 5:
        return with_blob(blob + bytes(rng.randrange(1, 4096)), "trailing bytes")
    if kind == 6:
        b = bytearray(blob)
        b[rng.randrange(len(b))] ^= 0x10
        return "bit flip, old signature", TrainReply(
            m, bytes(b), "", good.update_sha256, "[]", good.client_id, good.signature
        )
    if kind == 7:
        return "no signature", TrainReply(
            m, blob, "", good.update_sha256, "[]", good.client_id, b""
        )
    if kind == 8:
        d, s = resign(blob, r=rnd - 1)
        return "replay: signed for the previous round", TrainReply(
            m, blob, "", d, "[]", good.client_id, s
        )
    if kind == 9:
        d, s = resign(blob, run="another-run")
        return "replay: signed for another run", TrainReply(m, blob, "", d, "[]", good.client_id, s)
    if kind == 10:
        forger = generate_identity()
        d = hashlib.sha256(blob).hexdigest()
        sig = sign_update(forger, run_id, rnd, good.client_id, f"{d}:{metrics_digest(m)}")
        return "forged signature", TrainReply(m, blob, "", d, "[]", good.client_id, sig)
    if kind == 11:
        d, s = resign(blob)
        return "unknown client id", TrainReply(m, blob, "", d, "[]", "client-999", s)
    if kind == 12:
        key_name = rng.choice(list(m))
        mm = dict(m)
        mm[key_name] = rng.choice(
            [-1, -5.0, math.inf, math.nan, 10**18 if isinstance(m[key_name], int) else -1e300]
        )
        if isinstance(m[key_name], int) and not isinstance(mm[key_name], int):
            mm[key_name] = -1
        label = "bad metric (unsigned change)"
        if rng.random() < 0.5:
            # re-signed by the key holder itself: only range checks can stop these
            mm[key_name] = (
                -1 if isinstance(m[key_name], int) else rng.choice([-1.0, math.inf, math.nan])
            )
            d, sig = resign(blob, mm=mm)
            return "bad metric value (re-signed)", TrainReply(
                mm, blob, "", d, "[]", good.client_id, sig
            )
        return label, TrainReply(
            mm, blob, "", good.update_sha256, "[]", good.client_id, good.signature
        )
    if kind == 13:
        return "sha256 mismatch", TrainReply(
            m, blob, "", "0" * 64, "[]", good.client_id, good.signature
        )
    if kind == 14:
        mm = dict(m, **{"update-bytes": len(blob) + 1})
        return "declared size mismatch", TrainReply(
            mm, blob, "", good.update_sha256, "[]", good.client_id, good.signature
        )
    return "raw", None  # kind 15: structurally broken records, built below


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
    for rnd in range(2, ROUNDS + 2):
        # K honest nodes plus one node per bad reply: each node replies once, so every bad reply
        # is parsed and validated on its own merits (not dropped as a duplicate).
        strategy = EncryptedFedAvg(
            params,
            "{}",
            num_clients=K,
            min_train_clients=K,
            identities=registry,
            run_id="run-under-test",
        )
        honest_nodes = list(range(100, 100 + K))
        bad_nodes = list(range(1000, 1000 + BAD_PER_ROUND))
        strategy._current = RoundRecord(rnd, honest_nodes + bad_nodes)
        values = [npr.uniform(-1, 1, N_VALUES).astype(np.float32) for _ in range(K)]
        weights = [rng.randint(1, 200) for _ in range(K)]
        good = [
            _honest(
                codec,
                ids[f"client-{i}"],
                f"client-{i}",
                "run-under-test",
                rnd,
                values[i],
                weights[i],
            )
            for i in range(K)
        ]
        other = _honest(
            other_codec, ids["client-0"], "client-0", "run-under-test", rnd, values[0], 1
        )
        msgs: list[Message] = [_reply(honest_nodes[i], good[i]) for i in range(K)]
        node_label: dict[int, str] = {}
        for node in bad_nodes:
            i = rng.randrange(K)
            label, bad = _mutations(rng, good[i], other, ids[f"client-{i}"], "run-under-test", rnd)
            node_label[node] = label
            msgs.append(
                _broken_records(rng, node, good[i].blob or b"")
                if bad is None
                else _reply(node, bad)
            )
            labels[label] = labels.get(label, 0) + 1
        # a valid update from an unsampled node, and a second reply from an honest node
        msgs.append(_reply(999, good[0]))
        msgs.append(_reply(honest_nodes[1], good[1]))
        total_bad += BAD_PER_ROUND + 2
        # honest replies keep their place ahead of the duplicate; the rest arrive in any order
        tail = msgs[K:]
        rng.shuffle(tail)
        dup = next(m for m in tail if int(m.metadata.src_node_id) == honest_nodes[1])
        tail.remove(dup)
        order = msgs[:K]
        for m in tail:
            order.insert(rng.randrange(len(order) + 1), m)
        pos = max(i for i, m in enumerate(order) if int(m.metadata.src_node_id) == honest_nodes[1])
        order.insert(rng.randrange(pos + 1, len(order) + 1), dup)
        agg, _ = strategy.aggregate_train(rnd, order)
        rec = strategy._current
        assert rec is not None
        accepted = [c for c in rec.clients if c.status == "accepted"]
        assert agg is not None and rec.accepted == K, [
            (c.status, c.reason) for c in rec.clients if c.status != "accepted"
        ][:5]
        assert sorted(c.node_id for c in accepted) == honest_nodes, [
            node_label.get(c.node_id) for c in accepted
        ]
        bad_records = [c for c in rec.clients if c.status != "accepted"]
        assert len(bad_records) == BAD_PER_ROUND + 2
        assert all(c.reason for c in bad_records)
        mean, total_w, count = codec.decode(strategy.global_blob or b"")
        expected = sum(
            w * v.astype(np.float64) for w, v in zip(weights, values, strict=True)
        ) / sum(weights)
        assert count == K and total_w == sum(weights)
        assert np.abs(mean - expected).max() <= params.error_bound(sum(weights)) + 1e-6
    assert total_bad >= 1000
    assert len(labels) >= 15, labels


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
