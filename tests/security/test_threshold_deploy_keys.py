"""Threshold custody in a deployment's key provisioning (no processes started).

* Neither the server bundle nor the dealer's folder holds a share, and the server bundle holds
  no mask key (byte search); the server refuses a dealer-signed bundle that does.
* Bundle delivery: ``fedpriv client start`` installs the share and the mask key owner-only.
* Sealed delivery: the relayed share is stored only by its own node; a node added later gets
  the mask key and no share.
* The identity registry that travels with decryption requests is accepted only as the dealer
  signed it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedpriv.config import load_config
from fedpriv.crypto.rq import pack_bits
from fedpriv.crypto.tcustody import ThresholdPublic, load_mask_key, load_share
from fedpriv.crypto.threshold import KeyShare
from fedpriv.deploy.bundle import BundleFile, verify_bundle, write_bundle
from fedpriv.deploy.dealer import DealResult, add_node, init_federation
from fedpriv.deploy.threshold import registry_proof, verified_registry
from fedpriv.errors import CryptoError
from tests.security.test_deploy_keys import _deliver, _relay_context, task_identity  # noqa: F401

CFG = ["federation.num_clients=3", "train.model=logreg"]


def _init(out: Path, *, sealed: bool) -> DealResult:
    cfg = load_config(None, [*CFG, "encryption.key_custody=threshold", "encryption.threshold=2"])
    return init_federation(cfg, out, nodes=3, sealed=sealed, num_values=650, max_examples=400)


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> DealResult:
    return _init(tmp_path_factory.mktemp("bundled"), sealed=False)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> DealResult:
    out = tmp_path_factory.mktemp("sealed")
    r = _init(out, sealed=True)
    add_node(out, sealed=True)  # client-3: no share
    return r


def _share_windows(share: KeyShare, width: int = 48) -> list[bytes]:
    p = share.params
    rows = b"".join(pack_bits(share.residues()[j], b) for j, b in enumerate(p.prime_bits))
    return [rows[i : i + width] for i in range(0, len(rows) - width, 211)]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_no_server_or_dealer_file_holds_a_share(bundled: DealResult) -> None:
    pub = ThresholdPublic.load(bundled.server_bundle)
    assert pub.params.threshold == 2 and pub.params.parties == 3 and bundled.threshold == 2
    shares = [
        KeyShare.load(bundled.client_bundles[c] / "he_share.fpkey", pub.params) for c in pub.parties
    ]
    assert sorted(s.index for s in shares) == [1, 2, 3]
    windows = [w for s in shares for w in _share_windows(s)]
    mask = load_mask_key(bundled.client_bundles["client-0"] / "mask.key")
    # the windows are found where the shares are, and nowhere on the server's or dealer's side
    assert any(
        w in (bundled.client_bundles["client-0"] / "he_share.fpkey").read_bytes() for w in windows
    )
    for p in _files(bundled.server_bundle) + _files(bundled.out / "dealer"):
        data = p.read_bytes()
        assert not any(w in data for w in windows), f"{p} holds a key share"
    for p in _files(bundled.server_bundle):
        assert mask not in p.read_bytes(), f"{p} holds the mask key"
    meta = verify_bundle(bundled.server_bundle, kind="server").meta
    assert meta["key_custody"] == "threshold"
    assert not [r for r in meta["files"] if r.endswith((".fpkey", "mask.key", "secret.key"))]


def test_server_refuses_a_bundle_that_holds_a_share(bundled: DealResult, tmp_path: Path) -> None:
    from fedpriv.deploy.dealer import _Dealer
    from fedpriv.deploy.server import start_server

    src = verify_bundle(bundled.server_bundle, kind="server")
    files = {
        r: BundleFile(src.path(r).read_bytes()) for r in src.meta["files"] if r != "dealer.pub"
    }
    files["he_share.fpkey"] = BundleFile(
        (bundled.client_bundles["client-0"] / "he_share.fpkey").read_bytes(), 0o600
    )
    meta = {
        k: v
        for k, v in src.meta.items()
        if k not in ("files", "format", "kind", "created", "dealer")
    }
    bad = write_bundle(
        tmp_path / "server",
        kind="server",
        meta=meta,
        files=files,
        dealer=_Dealer(bundled.out).signing_key(),
    )
    with pytest.raises(CryptoError, match="must never hold"):
        start_server(bad, address="127.0.0.1:1", state_dir=tmp_path / "state")


def test_client_start_installs_share_and_mask_key(bundled: DealResult, tmp_path: Path) -> None:
    from fedpriv.crypto.codec import ClientCodec
    from fedpriv.deploy.client import prepare_client

    prep = prepare_client(bundled.client_bundles["client-1"], data="digits", state_dir=tmp_path)
    assert prep.has_secret
    keys = prep.keys_dir
    for name in ("he_share.fpkey", "mask.key"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600
    pub = ThresholdPublic.load(keys)
    assert load_share(keys, "client-1", pub).index == 2
    assert ClientCodec.load(keys).custody == "threshold"
    assert json.loads((keys / "identities.json").read_text()).keys() == {
        "client-0",
        "client-1",
        "client-2",
    }


def test_sealed_share_is_stored_only_by_its_node(
    sealed: DealResult,
    tmp_path: Path,
    task_identity: Any,  # noqa: F811
) -> None:
    from fedpriv.deploy.relay import RELAY_KEY, handle_relay_query

    blob = (sealed.server_bundle / "relay" / "client-1.sealed").read_bytes()
    prep, ctx = _relay_context(sealed, "client-1", tmp_path / "s1")
    assert not prep.has_secret and not (prep.keys_dir / "he_share.fpkey").exists()
    reply = handle_relay_query(_deliver(blob), ctx)
    assert reply.content.config_records[RELAY_KEY]["status"] == "stored"
    pub = ThresholdPublic.load(prep.keys_dir)
    assert load_share(prep.keys_dir, "client-1", pub).index == 2
    assert (prep.keys_dir / "mask.key").stat().st_mode & 0o777 == 0o600
    again = handle_relay_query(_deliver(blob), ctx)
    assert again.content.config_records[RELAY_KEY]["status"] == "unchanged"
    prep0, ctx0 = _relay_context(sealed, "client-0", tmp_path / "s0")
    with pytest.raises(CryptoError, match="made for"):
        handle_relay_query(_deliver(blob), ctx0)
    assert not (prep0.keys_dir / "he_share.fpkey").exists()
    # The node added later gets the mask key only.
    prep3, ctx3 = _relay_context(sealed, "client-3", tmp_path / "s3")
    blob3 = (sealed.out / "server" / "relay" / "client-3.sealed").read_bytes()
    handle_relay_query(_deliver(blob3), ctx3)
    assert (prep3.keys_dir / "mask.key").exists()
    assert not (prep3.keys_dir / "he_share.fpkey").exists()
    assert "client-3" not in ThresholdPublic.load(prep3.keys_dir).parties


def test_registry_travels_only_as_the_dealer_signed_it(
    sealed: DealResult, bundled: DealResult
) -> None:
    proof = registry_proof(sealed.out / "server")
    assert proof is not None
    reg = verified_registry(sealed.client_bundles["client-0"], proof)
    assert "client-3" in reg  # added after client-0's bundle was made
    doc = json.loads(proof[0])
    doc["client-9"] = doc["client-0"]
    with pytest.raises(CryptoError, match="not the registry the dealer signed"):
        verified_registry(sealed.client_bundles["client-0"], (json.dumps(doc), *proof[1:]))
    other = registry_proof(bundled.server_bundle)
    assert other is not None
    with pytest.raises(CryptoError, match="not the dealer's"):
        verified_registry(sealed.client_bundles["client-0"], other)
