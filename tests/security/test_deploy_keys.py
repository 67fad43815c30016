"""Deployment key provisioning: what the server can hold, and what a client refuses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedpriv.config import load_config
from fedpriv.crypto import KeyHolder
from fedpriv.deploy.bundle import BundleFile, verify_bundle, write_bundle
from fedpriv.deploy.dealer import add_node, init_federation
from fedpriv.errors import CryptoError, WireError


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["federation.num_clients=3", "train.model=logreg"])
    out = tmp_path_factory.mktemp("fed")
    r = init_federation(cfg, out, nodes=2, num_values=650, max_examples=400)
    add_node(out, sealed=True)
    return r


def _secret_windows(secret: bytes, width: int = 48) -> list[bytes]:
    step = max(1, (len(secret) - width) // 64)
    return [secret[i : i + width] for i in range(0, len(secret) - width + 1, step)]


def test_no_server_file_contains_the_he_secret(fed) -> None:  # type: ignore[no-untyped-def]
    secret = KeyHolder.load(fed.client_bundles["client-0"] / "secret.key").secret_key_bytes()
    windows = _secret_windows(secret)
    assert any(w in (fed.client_bundles["client-0"] / "secret.key").read_bytes() for w in windows)
    files = [p for p in fed.server_bundle.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sealed" for p in files)  # the sealed key is there, opaque
    for p in files:
        data = p.read_bytes()
        assert secret not in data and not any(w in data for w in windows), p


def test_server_refuses_a_bundle_that_holds_an_he_secret(fed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Even a dealer-signed server bundle is refused if it carries the secret (a dealer mistake)."""
    from fedpriv.deploy.dealer import _Dealer
    from fedpriv.deploy.server import start_server

    dealer = _Dealer(fed.out)
    src = verify_bundle(fed.server_bundle, kind="server")
    files = {
        rel: BundleFile(src.path(rel).read_bytes())
        for rel in src.meta["files"]
        if rel != "dealer.pub"
    }
    files["secret.key"] = BundleFile(
        (fed.client_bundles["client-0"] / "secret.key").read_bytes(), 0o600
    )
    meta = {
        k: v
        for k, v in src.meta.items()
        if k not in ("files", "format", "kind", "created", "dealer")
    }
    bad = write_bundle(
        tmp_path / "server", kind="server", meta=meta, files=files, dealer=dealer.signing_key()
    )
    with pytest.raises(CryptoError, match="must never hold the HE secret"):
        start_server(bad, address="127.0.0.1:1", state_dir=tmp_path / "state")
    assert not (tmp_path / "state" / "logs").exists()  # nothing was started


def _run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedpriv.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


@pytest.mark.parametrize("target", ["secret.key", "params.json", "ca.crt", "node.key"])
def test_client_refuses_to_start_with_a_tampered_bundle(fed, tmp_path: Path, target: str) -> None:  # type: ignore[no-untyped-def]
    import shutil

    bundle = tmp_path / "bundle"
    shutil.copytree(fed.client_bundles["client-0"], bundle)
    path = bundle / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    state = tmp_path / "state"
    r = _run_cli(
        [
            "client",
            "start",
            "--superlink",
            "127.0.0.1:9",
            "--bundle",
            str(bundle),
            "--state-dir",
            str(state),
            "--data",
            "digits",
        ],
        tmp_path,
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert f"{target} does not match its signed digest" in r.stderr
    assert "ask the key dealer for a fresh bundle" in r.stderr
    assert not (state / "logs").exists()  # refused before any process started


def test_client_refuses_a_bundle_re_signed_by_another_dealer(fed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """An attacker who rewrites a bundle and re-signs it with their own key: pin mismatch."""
    from fedpriv.deploy.pki import DealerKey

    good = verify_bundle(fed.client_bundles["client-0"], kind="client")
    state = tmp_path / "state"
    r = _run_cli(["keys", "verify", "--bundle", str(good.root)], tmp_path)
    assert r.returncode == 0 and "signature and" in r.stdout
    # first start pins the dealer key (then fails to connect to a closed port: exit 8)
    r = _run_cli(
        [
            "client",
            "start",
            "--superlink",
            "127.0.0.1:9",
            "--bundle",
            str(good.root),
            "--state-dir",
            str(state),
            "--data",
            "digits",
            "--connect-timeout",
            "3",
            "--cold",
        ],
        tmp_path,
    )
    assert r.returncode == 8 and (state / "dealer.fingerprint").exists(), r.stderr
    files = {
        rel: BundleFile(good.path(rel).read_bytes(), 0o600)
        for rel in good.meta["files"]
        if rel != "dealer.pub"
    }
    meta = {
        k: v
        for k, v in good.meta.items()
        if k not in ("files", "format", "kind", "created", "dealer")
    }
    forged = write_bundle(
        tmp_path / "forged", kind="client", meta=meta, files=files, dealer=DealerKey.generate()
    )
    r = _run_cli(
        [
            "client",
            "start",
            "--superlink",
            "127.0.0.1:9",
            "--bundle",
            str(forged),
            "--state-dir",
            str(state),
            "--data",
            "digits",
        ],
        tmp_path,
    )
    assert r.returncode == 4 and "this device was set up with dealer key" in r.stderr, r.stderr
    r = _run_cli(
        [
            "client",
            "start",
            "--superlink",
            "127.0.0.1:9",
            "--bundle",
            str(forged),
            "--state-dir",
            str(tmp_path / "s2"),
            "--data",
            "digits",
            "--dealer-fingerprint",
            good.dealer_fingerprint,
        ],
        tmp_path,
    )
    assert r.returncode == 4 and "not the expected" in r.stderr, r.stderr


@pytest.fixture
def task_identity():  # type: ignore[no-untyped-def]
    from flwr.supercore.task_identity import TaskIdentity

    names = ("_run_id", "_node_id", "_task_id")
    old = {n: getattr(TaskIdentity, n) for n in names}
    for n, v in zip(names, (7, 3, 1), strict=True):
        setattr(TaskIdentity, n, v)
    yield
    for n, v in old.items():
        setattr(TaskIdentity, n, v)


def _relay_context(fed, cid: str, state: Path):  # type: ignore[no-untyped-def]
    from flwr.app import Context, RecordDict

    from fedpriv.deploy.client import prepare_client

    prep = prepare_client(fed.out / "clients" / cid, data="digits", state_dir=state)
    nc = {
        "bundle": str(prep.bundle.root),
        "keys-dir": str(prep.keys_dir),
        "node-key": str(prep.node_key),
        "client-id": cid,
    }
    return prep, Context(run_id=7, node_id=3, node_config=nc, state=RecordDict(), run_config={})


def _deliver(blob: bytes):  # type: ignore[no-untyped-def]
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedpriv.deploy.relay import RELAY_KEY

    rec = ConfigRecord({"step": "deliver", "blob": blob})
    return Message(RecordDict({RELAY_KEY: rec}), dst_node_id=3, message_type="query")


def test_relayed_key_is_stored_only_by_its_node(fed, tmp_path: Path, task_identity) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.deploy.relay import RELAY_KEY, handle_relay_query

    blob = (fed.server_bundle / "relay" / "client-2.sealed").read_bytes()
    # the right node stores it owner-only (and a second delivery changes nothing)
    prep, ctx = _relay_context(fed, "client-2", tmp_path / "s2")
    assert not prep.has_secret
    reply = handle_relay_query(_deliver(blob), ctx)
    assert reply.content.config_records[RELAY_KEY]["status"] == "stored"
    stored = prep.keys_dir / "secret.key"
    assert stored.stat().st_mode & 0o777 == 0o600
    want = KeyHolder.load(fed.client_bundles["client-0"] / "secret.key").secret_key_bytes()
    assert KeyHolder.load(stored).secret_key_bytes() == want
    again = handle_relay_query(_deliver(blob), ctx)
    assert again.content.config_records[RELAY_KEY]["status"] == "unchanged"
    # another node cannot use it: refused, nothing written
    prep1, ctx1 = _relay_context(fed, "client-1", tmp_path / "s1")
    (prep1.keys_dir / "secret.key").unlink()
    with pytest.raises(CryptoError, match="made for"):
        handle_relay_query(_deliver(blob), ctx1)
    assert not (prep1.keys_dir / "secret.key").exists()
    # altered in transit: refused
    bad = bytearray(blob)
    bad[100] ^= 1
    with pytest.raises(CryptoError):
        handle_relay_query(_deliver(bytes(bad)), ctx)
    with pytest.raises(WireError):
        handle_relay_query(_deliver(b""), ctx)


def test_relay_log_records_digests_not_contents(fed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """What serve_relay writes: sizes and SHA-256 of opaque blobs (checked on a fake grid)."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, RecordDict

    from fedpriv.deploy.relay import RELAY_KEY, serve_relay

    class Grid:
        def get_node_ids(self):  # type: ignore[no-untyped-def]
            return [11, 12, 13]

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            out = []
            for m in messages:
                rec = m.content.config_records[RELAY_KEY]
                assert rec["step"] == "deliver" and m.metadata.dst_node_id == 13
                out.append(
                    SimpleNamespace(
                        metadata=SimpleNamespace(src_node_id=13),
                        content=RecordDict({RELAY_KEY: ConfigRecord({"status": "stored"})}),
                        has_error=lambda: False,
                    )
                )
            return out

    import flwr.app

    class FakeMessage:
        def __init__(self, content, dst_node_id, message_type):  # type: ignore[no-untyped-def]
            self.content = content
            self.metadata = SimpleNamespace(dst_node_id=dst_node_id)

    orig = flwr.app.Message
    import fedpriv.deploy.relay as relay_mod

    relay_mod.Message = FakeMessage  # type: ignore[misc,assignment]
    try:
        status = serve_relay(
            Grid(),  # type: ignore[arg-type]
            fed.server_bundle,
            tmp_path / "run",
            node_wait_s=1,
            timeout_s=1,
            node_map={"client-0": 11, "client-1": 12, "client-2": 13},
        )
    finally:
        relay_mod.Message = orig  # type: ignore[misc]
    assert status == {"client-2": "stored"}
    entries = [
        json.loads(line) for line in (tmp_path / "run" / "relay.jsonl").read_text().splitlines()
    ]
    assert [(e["client_id"], e["node_id"], e["status"]) for e in entries] == [
        ("client-2", 13, "stored")
    ]
    blob = (fed.server_bundle / "relay" / "client-2.sealed").read_bytes()
    import hashlib

    assert entries[0]["sha256"] == hashlib.sha256(blob).hexdigest()
    assert (tmp_path / "run" / "relay" / "client-2.sealed").read_bytes() == blob
