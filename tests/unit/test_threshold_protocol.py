"""Threshold custody at the protocol layer, without Flower: config, device policy, the key
folders the dealer writes, the checks a device makes before it partially decrypts, masking, the
decryption budget and the message codecs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from fedpriv.apps.decrypt import check_decrypt_request
from fedpriv.config import load_config, threshold_for
from fedpriv.crypto import threshold as th
from fedpriv.crypto.identity import (
    IdentityRegistry,
    generate_identity,
    public_openssh,
    sign_record,
)
from fedpriv.crypto.tcustody import (
    DecryptionCounter,
    ThresholdKeyHolder,
    ThresholdPublic,
    mask_context,
    masks_for,
    pack_node_keys,
    unpack_node_keys,
)
from fedpriv.crypto.tparams import choose_threshold_params
from fedpriv.errors import ConfigError, CryptoError, StateError
from fedpriv.privacy.ledger import RECORD_FORMAT, make_record
from fedpriv.privacy.policy import DevicePolicy
from fedpriv.privacy.rng import InsecureTestRandom
from fedpriv.protocol import (
    DecryptRequest,
    SignedUpdateRecord,
    build_decrypt_request,
    parse_decrypt_request,
)

NV, K, M, R, N, T = 700, 4, 20, 2.0, 4, 3
CIDS = [f"client-{i}" for i in range(N)]
RUN = "run-abc"


# --------------------------------------------------------------------------- config and policy
def test_config_custody_rules() -> None:
    cfg = load_config(None, ["encryption.key_custody=threshold", "federation.num_clients=5"])
    assert threshold_for(cfg) == 3  # a majority of 5
    assert threshold_for(load_config(None, ["encryption.key_custody=threshold"])) == 6
    with pytest.raises(ConfigError) as e:
        load_config(
            None,
            [
                "encryption.key_custody=threshold",
                "encryption.scheme=ckks",
                "encryption.threshold=11",
                "encryption.coeff_modulus_bits=[30]",
                "encryption.statistical_security=10",
                "device.require_rebuilt_aggregate=true",
            ],
        )
    text = "\n".join(e.value.errors)
    for want in (
        "needs encryption.scheme = 'bfv'",
        "must be in 2..10",
        "coeff_modulus_bits",
        "statistical_security",
        "require_rebuilt_aggregate",
    ):
        assert want in text, want
    with pytest.raises(ConfigError, match="only used with"):
        load_config(None, ["encryption.threshold=3"])
    with pytest.raises(ConfigError, match="num_clients >= 2"):
        load_config(None, ["encryption.key_custody=threshold", "federation.num_clients=1"])
    with pytest.raises(ConfigError, match="allowed_custody"):
        load_config(None, ["device.allowed_custody=['threshold']"])
    with pytest.raises(ConfigError, match="exceeds the 5 clients sampled per round"):
        load_config(None, ["encryption.key_custody=threshold", "federation.fraction_train=0.5"])


def test_a_device_requiring_threshold_custody_refuses_shared_custody() -> None:
    policy = DevicePolicy(allowed_custody=("threshold",))
    shared = load_config(None, ["privacy.noise_multiplier=1.0"])
    thr = load_config(None, ["privacy.noise_multiplier=1.0", "encryption.key_custody=threshold"])
    assert any("key_custody='shared'" in v for v in policy.review(shared))
    assert not policy.review(thr)
    strict = DevicePolicy(require_rebuilt_aggregate=True)
    assert any("decryption_check='records'" in v for v in strict.review(thr))
    rebuild = load_config(
        None,
        [
            "privacy.noise_multiplier=1.0",
            "encryption.key_custody=threshold",
            "encryption.decryption_check=rebuild",
        ],
    )
    assert not strict.review(rebuild)
    assert DevicePolicy.from_config(rebuild).require_rebuilt_aggregate
    assert DevicePolicy.from_config(thr).allowed_custody == ("threshold",)
    back = DevicePolicy.from_dict(strict.to_dict())
    assert back == strict
    with pytest.raises(ConfigError, match="allowed_custody"):
        DevicePolicy(allowed_custody=("nobody",))
    assert DevicePolicy().tighten(allowed_custody=["threshold"]).allowed_custody == ("threshold",)


# --------------------------------------------------------------------------- a small federation
class World:
    def __init__(self, tmp: Path) -> None:
        self.params = choose_threshold_params(NV, K, M, R, N, T)
        dealt = th.deal(self.params)
        self.pub = ThresholdPublic(
            self.params, dealt.public_key, dealt.key_id, {c: i + 1 for i, c in enumerate(CIDS)}
        )
        self.shares = {CIDS[s.index - 1]: s for s in dealt.shares}
        self.mask_key = bytes(range(32))
        self.holder = ThresholdKeyHolder(self.pub, self.mask_key)
        self.ids = {c: generate_identity() for c in CIDS}
        self.registry = IdentityRegistry.from_openssh(
            {c: public_openssh(k) for c, k in self.ids.items()}
        )
        rng = np.random.default_rng(0)
        self.values = [rng.uniform(-R, R, NV) for _ in CIDS]
        self.blobs = [
            self.holder.encrypt(v, 10 + i, rng=InsecureTestRandom(i)).blob
            for i, v in enumerate(self.values)
        ]
        self.records = [self.record(c, 1, b) for c, b in zip(CIDS, self.blobs, strict=True)]
        agg = th.ThresholdAggregator(self.params, self.pub.key_id)
        for b in self.blobs:
            agg.add(b)
        self.aggregate = agg.result()

    def record(self, cid: str, rnd: int, blob: bytes, run: str = RUN) -> SignedUpdateRecord:
        text, digest = make_record(
            RECORD_FORMAT,
            {
                "run_id": run,
                "round": rnd,
                "client_id": cid,
                "status": "trained",
                "update_sha256": hashlib.sha256(blob).hexdigest(),
            },
        )
        return SignedUpdateRecord(cid, text, sign_record(self.ids[cid], digest))

    def request(self, **kw: object) -> DecryptRequest:
        base: dict[str, object] = {
            "server_round": 1,
            "run_id": RUN,
            "config_json": "{}",
            "params_fingerprint": self.params.fingerprint(),
            "aggregate": self.aggregate,
            "participants": (1, 2, 3),
            "records": tuple(self.records),
        }
        base.update(kw)
        return DecryptRequest(**base)  # type: ignore[arg-type]

    def check(
        self,
        req: DecryptRequest,
        *,
        cid: str = "client-0",
        mode: str = "records",
        own: dict | None = None,
        k_min: int = 2,
    ) -> str:
        cfg = load_config(
            None,
            [
                "encryption.key_custody=threshold",
                f"encryption.decryption_check={mode}",
                "federation.num_clients=4",
            ],
        )
        return check_decrypt_request(
            req,
            cfg,
            holder=self.holder,
            registry=self.registry,
            client_id=cid,
            k_min=k_min,
            own_record=own,
            require_rebuild=False,
        ).refusal


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("w"))


def test_an_honest_request_passes_and_decrypts_exactly(world: World) -> None:
    assert world.check(world.request()) == ""
    own = json.loads(world.records[0].record)
    assert world.check(world.request(), own=own) == ""
    assert world.check(world.request(updates=tuple(world.blobs)), mode="rebuild") == ""
    ps = (1, 2, 4)
    digest = th.aggregate_digest(world.aggregate)
    masks = masks_for(world.params, world.mask_key, digest, ps)
    partials = [
        world.shares[CIDS[i - 1]].partial_decrypt(world.aggregate, ps, masks[i], min_count=2)
        for i in ps
    ]
    combined = th.combine_partials(world.params, world.aggregate, partials, world.pub.key_id)
    out = world.holder.decrypt(combined)
    want = sum((10 + i) * np.clip(v, -R, R) for i, v in enumerate(world.values))
    assert out.count == N and out.total_weight == sum(10 + i for i in range(N))
    assert np.abs(out.weighted_sum - want).max() <= world.params.error_bound(1) * out.total_weight
    # Without the mask key the combined blob is a one-time pad: decoding it fails its checks.
    with pytest.raises(CryptoError):
        th.finish_decryption(
            world.params, combined, world.pub.key_id, {i: np.zeros_like(masks[i]) for i in ps}
        )
    # Unmasked partials are refused by the client codec (a server could have read them).
    plain = [world.shares[CIDS[i - 1]].partial_decrypt(world.aggregate, ps) for i in ps]
    unmasked = th.combine_partials(world.params, world.aggregate, plain, world.pub.key_id)
    with pytest.raises(CryptoError, match="not masked"):
        world.holder.decrypt(unmasked)


def test_masks_bind_the_participant_set(world: World) -> None:
    d = th.aggregate_digest(world.aggregate)
    assert mask_context(d, (1, 2, 3)) != mask_context(d, (1, 2, 4))
    assert mask_context(d, (3, 1, 2)) == mask_context(d, (1, 2, 3))
    a = masks_for(world.params, world.mask_key, d, (1, 2, 3))[1]
    b = masks_for(world.params, world.mask_key, d, (1, 2, 4))[1]
    assert not np.array_equal(a, b)


def test_a_request_for_one_clients_ciphertext_is_refused(world: World) -> None:
    agg = th.ThresholdAggregator(world.params, world.pub.key_id)
    agg.add(world.blobs[1])
    single = agg.result()
    why = world.check(world.request(aggregate=single, records=(world.records[1],)))
    assert "sums 1 update(s)" in why and "one client's ciphertext" in why
    # The same single ciphertext with all four records: the records do not add up.
    why = world.check(world.request(aggregate=single), k_min=1)
    assert "do not add up" in why


def test_forged_count_with_real_records_is_refused_when_rebuilding(world: World) -> None:
    """A server frames client-1's ciphertext as an aggregate of 4: the count and the records
    check out, but rebuilding the sum from the signed updates does not give these bytes."""
    c0c, c1 = th._load_update(world.params, world.blobs[1], world.pub.key_id)
    payload = th._pack_ciphertext(world.params, c0c, c1)
    forged = th._frame(world.params, th.KIND_AGGREGATE, world.pub.key_id, th._U32.pack(N), payload)
    req = world.request(aggregate=forged, updates=tuple(world.blobs))
    assert "not the sum of the round's signed updates" in world.check(req, mode="rebuild")
    # A rebuild request without the updates, or with an update swapped, is refused too.
    assert "carries 0 update(s)" in world.check(world.request(), mode="rebuild")
    swapped = (world.blobs[1], world.blobs[0], *world.blobs[2:])
    why = world.check(world.request(updates=swapped), mode="rebuild")
    assert "does not match its signed record" in why


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ("other-round", "is for round 2"),
        ("other-run", "is for run_id"),
        ("bad-signature", "does not verify"),
        ("duplicate", "two records"),
        ("unregistered", "does not verify"),
        ("too-few", "3 valid signed update record(s) of round 1, this device requires at least 4"),
        ("not-member", "including this device"),
        ("wrong-size-p", "including this device"),
    ],
)
def test_records_that_do_not_check_out_are_refused(world: World, change: str, needle: str) -> None:
    recs = list(world.records)
    kw: dict[str, object] = {}
    k_min = 2
    if change == "other-round":
        recs[2] = world.record("client-2", 2, world.blobs[2])
    elif change == "other-run":
        recs[2] = world.record("client-2", 1, world.blobs[2], run="another-run")
    elif change == "bad-signature":
        r = recs[2]
        recs[2] = SignedUpdateRecord(r.client_id, r.record, bytes(64))
    elif change == "duplicate":
        recs[3] = recs[2]
    elif change == "unregistered":
        r = recs[2]
        recs[2] = SignedUpdateRecord("client-9", r.record, r.signature)
    elif change == "too-few":
        recs, k_min = recs[:3], 4
    elif change == "not-member":
        kw["participants"] = (2, 3, 4)
    elif change == "wrong-size-p":
        kw["participants"] = (1, 2)
    why = world.check(world.request(records=tuple(recs), **kw), k_min=k_min)
    assert needle in why, why


def test_a_device_that_trained_must_find_its_own_update(world: World) -> None:
    own = json.loads(world.records[0].record)
    others = tuple(world.records[1:])
    agg = th.ThresholdAggregator(world.params, world.pub.key_id)
    for b in world.blobs[1:]:
        agg.add(b)
    why = world.check(world.request(aggregate=agg.result(), records=others), own=own)
    assert "its update is not in the aggregate" in why
    assert world.check(world.request(aggregate=agg.result(), records=others)) == ""


def test_shareless_clients_cannot_decrypt(world: World) -> None:
    holder = ThresholdKeyHolder(
        ThresholdPublic(
            world.params,
            world.pub.public_key,
            world.pub.key_id,
            {"client-0": 1, "client-1": 2, "client-2": 3},
        ),
        world.mask_key,
    )
    cfg = load_config(None, ["encryption.key_custody=threshold", "federation.num_clients=4"])
    out = check_decrypt_request(
        world.request(),
        cfg,
        holder=holder,
        registry=world.registry,
        client_id="client-3",
        k_min=2,
        own_record=None,
        require_rebuild=False,
    )
    assert "holds no key share" in out.refusal


# --------------------------------------------------------------------------- files and codecs
def test_dealt_folders_keep_shares_and_mask_key_from_the_server(tmp_path: Path) -> None:
    from fedpriv.crypto.codec import ClientCodec, load_params_file
    from fedpriv.keys import deal_keys

    cfg = load_config(None, ["encryption.key_custody=threshold", "federation.num_clients=4"])
    deal_keys(cfg, num_values=NV, max_weight=M, out=tmp_path)
    server = sorted(p.name for p in (tmp_path / "server").iterdir())
    assert server == ["identities.json", "params.json", "parties.json", "public_key.bin"]
    client = tmp_path / "client"
    assert sorted(p.name for p in (client / "shares").iterdir()) == [f"{c}.fpkey" for c in CIDS]
    for p in [*(client / "shares").iterdir(), client / "mask.key"]:
        assert p.stat().st_mode & 0o077 == 0, p
    params = load_params_file(tmp_path / "server" / "params.json")
    assert params.custody == "threshold" and params.threshold == 3  # type: ignore[attr-defined]
    codec = ClientCodec.load(client)
    assert codec.custody == "threshold" and codec.encrypted
    upd = codec.encode(np.zeros(NV, dtype=np.float32), 5)
    assert len(upd.blob) == params.max_blob_bytes
    # A mask key readable by others is refused.
    (client / "mask.key").chmod(0o644)
    with pytest.raises(CryptoError, match="accessible by other users"):
        ClientCodec.load(client)


def test_node_keys_blob_roundtrip_and_corruption() -> None:
    blob = pack_node_keys(b"share-bytes", bytes(32))
    assert unpack_node_keys(blob) == (b"share-bytes", bytes(32))
    assert unpack_node_keys(pack_node_keys(b"", bytes(32))) == (b"", bytes(32))
    for bad in (blob[:-1], blob + b"x", b"nope" + blob[4:]):
        with pytest.raises(CryptoError):
            unpack_node_keys(bad)


def test_decryption_counter_persists_and_refuses_corruption(tmp_path: Path) -> None:
    kid = bytes(32)
    c = DecryptionCounter.load(tmp_path)
    assert c.used(kid) == 0
    assert c.charge(kid) == 1 and c.charge(kid) == 2
    assert DecryptionCounter.load(tmp_path).used(kid) == 2
    (tmp_path / DecryptionCounter.FILE).write_text('{"00": -1}')
    with pytest.raises(StateError):
        DecryptionCounter.load(tmp_path)
    assert DecryptionCounter.load(None, '{"aa": 3}').counts == {"aa": 3}


def test_decrypt_request_codec_roundtrip(world: World) -> None:
    req = world.request(updates=tuple(world.blobs), registry_proof=("{}", "{}", b"sig"))
    back = parse_decrypt_request(build_decrypt_request(req), max_blob_bytes=1 << 20)
    assert back == req
    from fedpriv.errors import WireError

    content = build_decrypt_request(world.request())
    content.config_records["decrypt"]["signatures"] = [b"x"]
    with pytest.raises(WireError, match="do not line up"):
        parse_decrypt_request(content, max_blob_bytes=1 << 20)
