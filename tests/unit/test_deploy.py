"""Unit tests of fedpriv.deploy: PKI, signed bundles, sealed keys, dealer, helpers (no processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fedpriv.config import load_config
from fedpriv.deploy.bundle import BundleFile, check_pin, verify_bundle, write_bundle
from fedpriv.deploy.pki import (
    DealerKey,
    TlsCa,
    load_node_private,
    load_node_public,
    make_server_cert,
    new_node_key,
    node_key_fingerprint,
    node_private_openssh,
    node_public_openssh,
    verify_server_cert,
)
from fedpriv.deploy.seal import SealContext, open_sealed, seal_secret
from fedpriv.errors import ConfigError, CryptoError, DataError
from fedpriv.privacy.policy import DevicePolicy

NUM_VALUES = 650  # logreg on digits


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fedpriv.deploy.dealer import init_federation

    cfg = load_config(None, ["federation.num_clients=3", "train.model=logreg"])
    out = tmp_path_factory.mktemp("fed")
    return init_federation(cfg, out, nodes=2, num_values=NUM_VALUES, max_examples=400)


# ----------------------------------------------------------------------------- pki
def test_server_cert_is_issued_by_the_ca_for_loopback_and_extra_hosts() -> None:
    ca = TlsCa.generate()
    key_pem, cert_pem = make_server_cert(ca, ["fl.example.org", "10.0.0.5"])
    sans = verify_server_cert(ca.cert_pem(), cert_pem)
    assert {"127.0.0.1", "localhost", "fl.example.org", "10.0.0.5"} <= set(sans)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert serialization.load_pem_private_key(key_pem, password=None)
    with pytest.raises(CryptoError, match="does not verify against the bundle CA"):
        verify_server_cert(TlsCa.generate().cert_pem(), cert_pem)


def test_node_keys_are_p384_openssh_both_ways() -> None:
    key = new_node_key()
    priv = node_private_openssh(key)
    pub = node_public_openssh(key.public_key(), "client-0")
    assert priv.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert pub.startswith(b"ecdsa-sha2-nistp384 ") and pub.rstrip().endswith(b" client-0")
    again = load_node_private(priv)
    assert node_key_fingerprint(again.public_key()) == node_key_fingerprint(load_node_public(pub))
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = ed25519.Ed25519PrivateKey.generate().public_key()
    line = other.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    with pytest.raises(CryptoError, match="P-384"):
        load_node_public(line)


# ----------------------------------------------------------------------------- bundles
def _bundle(tmp_path: Path, dealer: DealerKey | None = None) -> tuple[Path, DealerKey]:
    dealer = dealer or DealerKey.generate()
    root = write_bundle(
        tmp_path / "b",
        kind="client",
        meta={"federation": "f1", "client_id": "client-0"},
        files={
            "params.json": BundleFile(b'{"scheme": "off"}'),
            "secret.key": BundleFile(b"s" * 100, 0o600),
            "sub/x.pub": BundleFile(b"pub"),
        },
        dealer=dealer,
    )
    return root, dealer


def test_bundle_roundtrip_modes_and_kind(tmp_path: Path) -> None:
    root, dealer = _bundle(tmp_path)
    b = verify_bundle(root, kind="client")
    assert b.federation == "f1" and b.dealer_fingerprint == dealer.fingerprint()
    assert set(b.meta["files"]) == {"params.json", "secret.key", "sub/x.pub", "dealer.pub"}
    assert (root / "secret.key").stat().st_mode & 0o777 == 0o600
    assert root.stat().st_mode & 0o077 == 0
    with pytest.raises(CryptoError, match="'server' bundle is needed"):
        verify_bundle(root, kind="server")


@pytest.mark.parametrize(
    "tamper, message",
    [
        (
            lambda r: (r / "params.json").write_bytes(b'{"scheme": "bfv"}'),
            "does not match its signed digest",
        ),
        (lambda r: (r / "secret.key").unlink(), "secret.key is missing"),
        (lambda r: (r / "extra.txt").write_text("x"), "not listed in the signed manifest"),
        (
            lambda r: (r / "manifest.json").write_text(
                (r / "manifest.json").read_text().replace('"f1"', '"f2"')
            ),
            "signature does not verify",
        ),
        (lambda r: (r / "manifest.sig").write_text("!!!"), "not valid base64"),
        (lambda r: (r / "manifest.sig").unlink(), "manifest.sig is missing"),
    ],
)
def test_tampered_bundle_is_refused(tmp_path: Path, tamper, message: str) -> None:  # type: ignore[no-untyped-def]
    root, _ = _bundle(tmp_path)
    tamper(root)
    with pytest.raises(CryptoError, match=message):
        verify_bundle(root)


def test_swapped_dealer_key_is_refused(tmp_path: Path) -> None:
    """Re-signing with another key passes the signature check; the pin catches it."""
    root, _ = _bundle(tmp_path)
    b = verify_bundle(root)
    state = tmp_path / "state"
    assert check_pin(b, state) == "new-pin"
    assert (state / "dealer.fingerprint").stat().st_mode & 0o077 == 0
    assert check_pin(b, state) == "pinned"
    forged_root, forger = _bundle(tmp_path / "forged")
    forged = verify_bundle(forged_root)
    with pytest.raises(CryptoError, match="this device was set up with dealer key"):
        check_pin(forged, state)
    with pytest.raises(CryptoError, match="not the expected"):
        check_pin(forged, tmp_path / "fresh", expected=b.dealer_fingerprint)
    assert check_pin(b, tmp_path / "fresh2", expected=b.dealer_fingerprint) == "expected"
    # the manifest must name the key in dealer.pub
    (forged_root / "dealer.pub").write_bytes(DealerKey.generate().public_pem())
    with pytest.raises(CryptoError):
        verify_bundle(forged_root)
    assert forger.fingerprint() != b.dealer_fingerprint


# ----------------------------------------------------------------------------- sealing
def test_sealed_secret_opens_only_for_its_node_and_context() -> None:
    dealer = DealerKey.generate()
    node, other = new_node_key(), new_node_key()
    ctx = SealContext("fed-1", "client-3", "p" * 64)
    secret = os.urandom(5000)
    blob = seal_secret(secret, node.public_key(), ctx, dealer)
    assert secret not in blob and secret[:64] not in blob
    pub = serialization.load_pem_public_key(dealer.public_pem())
    assert open_sealed(blob, node, pub, ctx) == secret  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="node_key"):
        open_sealed(blob, other, pub, ctx)  # type: ignore[arg-type]
    for wrong in (
        SealContext("fed-2", "client-3", "p" * 64),
        SealContext("fed-1", "client-4", "p" * 64),
        SealContext("fed-1", "client-3", "q" * 64),
    ):
        with pytest.raises(CryptoError, match="made for"):
            open_sealed(blob, node, pub, wrong)  # type: ignore[arg-type]
    forger = serialization.load_pem_public_key(DealerKey.generate().public_pem())
    with pytest.raises(CryptoError, match="signature does not verify"):
        open_sealed(blob, node, forger, ctx)  # type: ignore[arg-type]
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 1
    with pytest.raises(CryptoError):
        open_sealed(bytes(flipped), node, pub, ctx)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match="not a fedpriv sealed key"):
        open_sealed(b"junk", node, pub, ctx)  # type: ignore[arg-type]
    with pytest.raises(CryptoError, match=r"inconsistent lengths|truncated"):
        open_sealed(blob[:-10], node, pub, ctx)  # type: ignore[arg-type]


def test_sealing_to_a_foreign_key_cannot_be_opened_even_if_signed() -> None:
    """A blob sealed (and dealer-signed) for another node fails decryption, not just the header."""
    from cryptography.hazmat.primitives.asymmetric import ec

    dealer = DealerKey.generate()
    node, other = new_node_key(), new_node_key()
    ctx = SealContext("f", "c", "p")
    blob = seal_secret(b"secret", other.public_key(), ctx, dealer)
    pub = serialization.load_pem_public_key(dealer.public_pem())
    assert isinstance(node, ec.EllipticCurvePrivateKey)
    with pytest.raises(CryptoError):
        open_sealed(blob, node, pub, ctx)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- dealer
def test_init_writes_signed_bundles_and_keeps_the_secret_off_the_server(federation) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.crypto import KeyHolder

    r = federation
    server = verify_bundle(r.server_bundle, kind="server")
    assert not any(Path(f).name in ("secret.key", "he_secret.key") for f in server.meta["files"])
    assert set(server.meta["clients"]) == {"client-0", "client-1"}
    ids = json.loads((r.server_bundle / "identities.json").read_text())
    for cid, path in r.client_bundles.items():
        b = verify_bundle(path, kind="client")
        assert b.meta["client_id"] == cid and b.meta["delivery"] == "bundle"
        assert b.has("secret.key") and b.has("node.key")
        holder = KeyHolder.load(path / "secret.key")
        assert holder.params.fingerprint() == r.params_fingerprint
        # the registered key is the node key, for Flower auth and for update signatures alike
        key = load_node_private((path / "node.key").read_bytes())
        assert node_key_fingerprint(load_node_public(ids[cid].encode())) == node_key_fingerprint(
            key.public_key()
        )
        assert (server.root / "nodes" / f"{cid}.pub").read_bytes() == (
            path / "node.pub"
        ).read_bytes()
    assert r.max_clients == 3 and r.max_weight == 400 and r.num_values == NUM_VALUES
    assert (r.out / "dealer").stat().st_mode & 0o077 == 0


def test_add_node_sealed_and_with_the_devices_own_key(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.crypto import KeyHolder
    from fedpriv.deploy.dealer import add_node, write_node_key
    from fedpriv.deploy.pki import load_dealer_public

    r = add_node(federation.out, sealed=True)
    ((cid, path),) = r.client_bundles.items()
    assert cid == "client-2" and r.sealed == ["client-2"]
    b = verify_bundle(path, kind="client")
    assert not b.has("secret.key") and b.meta["delivery"] == "sealed"
    server = verify_bundle(r.server_bundle, kind="server")
    blob = server.path("relay/client-2.sealed").read_bytes()
    secret = KeyHolder.load(federation.client_bundles["client-0"] / "secret.key").to_bytes()
    opened = open_sealed(
        blob,
        load_node_private((path / "node.key").read_bytes()),
        load_dealer_public(b.path("dealer.pub").read_bytes()),
        SealContext(b.federation, cid, r.params_fingerprint),
    )
    assert opened == secret
    # a device that made its own key: the bundle carries no private key at all
    priv, pub, fp = write_node_key(tmp_path / "dev")
    assert priv.stat().st_mode & 0o777 == 0o600
    r2 = add_node(federation.out, client_id="edge-7", sealed=True, public_key=pub.read_bytes())
    b2 = verify_bundle(r2.client_bundles["edge-7"], kind="client")
    assert not b2.has("node.key") and b2.meta["node_key"] == fp
    assert "edge-7" in json.loads((r2.server_bundle / "identities.json").read_text())
    assert r2.over_capacity  # 4 nodes, keys sum at most 3 updates per round
    with pytest.raises(ConfigError, match="already exists"):
        add_node(federation.out, client_id="edge-7")
    with pytest.raises(ConfigError, match="client id"):
        add_node(federation.out, client_id="../evil")
    with pytest.raises(CryptoError, match="exists"):
        write_node_key(tmp_path / "dev")


def test_init_refuses_to_overwrite(federation) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.deploy.dealer import init_federation

    with pytest.raises(ConfigError, match="already holds a federation"):
        init_federation(load_config(None), federation.out, nodes=1, num_values=10, max_examples=10)


# ----------------------------------------------------------------------------- client prep
def test_prepare_client_lays_out_owner_only_state(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.deploy.client import prepare_client

    csv = tmp_path / "mine.csv"
    csv.write_text("a,b,label\n1,2,0\n")
    state = tmp_path / "state"
    prep = prepare_client(federation.client_bundles["client-1"], data=str(csv), state_dir=state)
    assert prep.pin == "new-pin" and prep.has_secret and prep.client_id == "client-1"
    assert state.stat().st_mode & 0o077 == 0
    assert (state / "keys" / "secret.key").stat().st_mode & 0o777 == 0o600
    text = (state / "node-config.toml").read_text()
    import tomllib

    nc = tomllib.loads(text)
    assert nc["data"] == f"csv:{csv.resolve()}" and nc["client-id"] == "client-1"
    assert nc["keys-dir"] == str(state / "keys") and nc["state-dir"] == str(state)
    assert nc["identity-key"] == nc["node-key"]
    assert nc["policy"] == str(state / "policy.json") and "insecure-test-seed" not in nc
    assert prep.policy == DevicePolicy()  # the defaults when the owner gives none
    capped = prepare_client(
        federation.client_bundles["client-1"],
        data="digits",
        state_dir=state,
        policy=DevicePolicy().tighten(max_epsilon=3.5),
    )
    assert capped.policy.max_epsilon == 3.5 and capped.policy.max_delta == 1e-5
    assert (state / "policy.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ConfigError, match="--data"):
        prepare_client(federation.client_bundles["client-1"], data=None, state_dir=state)
    with pytest.raises(DataError):
        prepare_client(
            federation.client_bundles["client-1"], data=str(tmp_path / "nope.csv"), state_dir=state
        )
    # the node key must be the registered one, and owner-only
    other = tmp_path / "other.key"
    other.write_bytes(node_private_openssh(new_node_key()))
    other.chmod(0o600)
    with pytest.raises(CryptoError, match="not the key the dealer registered"):
        prepare_client(
            federation.client_bundles["client-1"], data="digits", state_dir=state, node_key=other
        )
    other.chmod(0o644)
    with pytest.raises(CryptoError, match="readable by other users"):
        prepare_client(
            federation.client_bundles["client-1"], data="digits", state_dir=state, node_key=other
        )


def test_partition_and_address_parsing(federation, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.deploy.client import prepare_client
    from fedpriv.deploy.processes import parse_address

    prep = prepare_client(
        federation.client_bundles["client-0"], data=None, state_dir=tmp_path / "s", partition=(0, 3)
    )
    assert "partition-id = 0\nnum-partitions = 3" in prep.node_config.read_text()
    with pytest.raises(ConfigError):
        prepare_client(
            federation.client_bundles["client-0"],
            data=None,
            state_dir=tmp_path / "s",
            partition=(3, 3),
        )
    assert parse_address("10.1.2.3:9092") == ("10.1.2.3", 9092)
    assert parse_address("[::1]:9092") == ("::1", 9092)
    for bad in ("nohost", "h:0", "h:x", ":9"):
        with pytest.raises(ConfigError):
            parse_address(bad)


# ----------------------------------------------------------------------------- app + grid
def test_project_builds_a_tiny_fab_with_the_run_config_keys(tmp_path: Path) -> None:
    import tomllib

    from flwr.cli.build import build_fab_from_disk

    from fedpriv.deploy.project import write_project
    from fedpriv.runs import FlowerRunConfig

    root = write_project(tmp_path / "app")
    fab = build_fab_from_disk(root)
    assert len(fab) < 10_000
    cfg = tomllib.loads((root / "pyproject.toml").read_text())
    assert cfg["tool"]["flwr"]["app"]["config"] == FlowerRunConfig().to_mapping()


def test_allow_list_grid_hides_and_refuses_unknown_nodes() -> None:
    from types import SimpleNamespace

    from fedpriv.deploy.apps import AllowListGrid
    from fedpriv.runs import FlowerRunConfig

    def parse_allowed_nodes(text: str) -> set[int]:
        return FlowerRunConfig(allowed_nodes=text).allowed_node_ids()

    def parse_node_map(text: str) -> dict[str, int]:
        return FlowerRunConfig(node_map=text).node_ids()

    def msg(node: int) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node))

    class FakeGrid:
        def __init__(self) -> None:
            self.sent: list[int] = []

        def get_node_ids(self):  # type: ignore[no-untyped-def]
            return [1, 2, 3, 99]

        def send_and_receive(self, messages, *, timeout=None):  # type: ignore[no-untyped-def]
            self.sent = [m.metadata.dst_node_id for m in messages]
            return []

    inner = FakeGrid()
    g = AllowListGrid(inner, parse_allowed_nodes("1, 2,3"))  # type: ignore[arg-type]
    assert sorted(g.get_node_ids()) == [1, 2, 3]
    g.send_and_receive([msg(2)])  # type: ignore[list-item]
    assert inner.sent == [2]
    with pytest.raises(ConfigError, match="not registered"):
        g.send_and_receive([msg(99)])  # type: ignore[list-item]
    with pytest.raises(ConfigError):
        parse_allowed_nodes("1,x")
    assert parse_node_map("client-0=5, client-1=7") == {"client-0": 5, "client-1": 7}
    with pytest.raises(ConfigError):
        parse_node_map("client-0")


def test_config_must_fit_the_keys_and_the_registered_nodes(federation) -> None:  # type: ignore[no-untyped-def]
    from fedpriv.deploy.run import check_config_fits

    params = federation.server_bundle / "params.json"
    check_config_fits(load_config(None, ["federation.num_clients=3"]), params, 3)
    with pytest.raises(ConfigError) as e:
        check_config_fits(
            load_config(None, ["federation.num_clients=5", "encryption.scheme=ckks"]), params, 3
        )
    text = str(e.value)
    assert "3 problem(s)" in text and "ckks" in text and "registered 3 nodes" in text


# ----------------------------------------------------------------------------- processes
def test_managed_process_stops_its_whole_tree(tmp_path: Path) -> None:
    from fedpriv.deploy.processes import ManagedProcess, descendants

    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'])\n"
        "time.sleep(300)\n"
    )
    p = ManagedProcess(
        "tree", [sys.executable, "-c", script], env=dict(os.environ), log_path=tmp_path / "log"
    ).start()
    deadline = time.monotonic() + 20
    while not descendants(p.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    kids = descendants(p.pid)
    assert kids
    p.stop(timeout=5)
    time.sleep(0.2)
    for pid in [p.pid, *kids]:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"


def test_warm_shim_runs_cold_without_a_server(tmp_path: Path) -> None:
    """With no warm server the shim execs the ClientApp runner (here: its --help)."""
    from fedpriv.deploy.warm import SOCKET_ENV, install_shim

    shim = install_shim(tmp_path / "bin")
    env = {k: v for k, v in os.environ.items() if k != SOCKET_ENV}
    out = subprocess.run(
        [str(shim), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout
    env[SOCKET_ENV] = str(tmp_path / "missing.sock")
    out = subprocess.run(
        [str(shim), "--help"], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0 and "--runtime-api-address" in out.stdout


@pytest.mark.slow
def test_warm_server_forks_a_child_per_request_and_relays_its_status(tmp_path: Path) -> None:
    from fedpriv.deploy.warm import SOCKET_ENV, install_shim

    sock = tmp_path / "w.sock"
    srv = subprocess.Popen(
        [sys.executable, "-m", "fedpriv.deploy.warm", str(sock)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        assert srv.stdout is not None
        line = srv.stdout.readline().decode()
        assert "warm ClientApp server ready" in line, line
        assert sock.stat().st_mode & 0o077 == 0
        shim = install_shim(tmp_path / "bin")
        env = {**os.environ, SOCKET_ENV: str(sock)}
        t0 = time.monotonic()
        out = subprocess.run(
            [str(shim), "--help"], capture_output=True, text=True, env=env, timeout=60
        )
        assert out.returncode == 0 and "--runtime-api-address" in out.stdout
        assert time.monotonic() - t0 < 5  # no interpreter start with torch imports
        bad = subprocess.run(
            [str(shim), "--no-such-flag"], capture_output=True, text=True, env=env, timeout=60
        )
        assert bad.returncode == 2 and "flwr-clientapp: error" in bad.stderr
    finally:
        os.killpg(srv.pid, signal.SIGTERM)
        srv.wait(20)
    assert not sock.exists()


def test_device_policy_takes_requests_only_when_they_are_at_least_as_private() -> None:
    """The run's config comes from the server: a request may tighten the device's bounds, never
    loosen them (issue 10)."""
    policy = DevicePolicy().tighten(max_epsilon=4.0, min_noise_multiplier=0.8)
    ok = load_config(None, ["privacy.max_epsilon=1000", "privacy.noise_multiplier=1.0"])
    assert policy.review(ok, 1.0) == []
    lim = policy.limits(ok)
    assert lim.max_epsilon == 4.0 and lim.k_min >= 2  # the device's cap wins over 1000
    stricter = load_config(None, ["privacy.max_epsilon=2", "privacy.target_epsilon=2"])
    assert policy.limits(stricter).max_epsilon == 2.0
    assert any("privacy.mode" in v for v in policy.review(load_config(None, ["privacy.mode=off"])))
    assert any("delta" in v for v in policy.review(load_config(None, ["privacy.delta=0.1"])))
    assert any("noise multiplier" in v for v in policy.review(ok, 0.5))
    assert any(
        "encryption.scheme" in v
        for v in policy.review(load_config(None, ["encryption.scheme=off"]), 1.0)
    )
    # a bound can only get stricter
    assert policy.tighten(max_epsilon=100.0).max_epsilon == 4.0
    assert DevicePolicy.from_dict(policy.to_dict()) == policy
    with pytest.raises(ConfigError, match="unknown key"):
        DevicePolicy.from_dict({"max_epsilon": 1.0, "noise_seed": 3})


def test_managed_process_stops_children_orphaned_before_the_stop(tmp_path: Path) -> None:
    """A Flower daemon whose parent already exited (reparented) is still stopped."""
    from fedpriv.deploy.processes import ManagedProcess, descendants

    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "time.sleep(2)\n"
    )
    p = ManagedProcess(
        "leaver", [sys.executable, "-c", script], env=dict(os.environ), log_path=tmp_path / "log"
    ).start()
    deadline = time.monotonic() + 20
    while not descendants(p.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    kids = descendants(p.pid)
    p.remember_descendants()
    p.wait(30)  # the parent exits; its child lives on in its own session
    assert kids and all(Path(f"/proc/{k}").exists() for k in kids)
    p.stop(timeout=5)
    time.sleep(0.2)
    for pid in kids:
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] == "Z"
