"""The key dealer for deployments: run by the data owners, never by the server operator.

``fedpriv keys init --nodes N --out DIR`` writes::

    DIR/dealer/             stays with the data owners (owner-only): signing key, TLS CA key,
                            the HE secret (to seal keys for nodes added later, or to evaluate)
    DIR/server/             the server bundle: public HE parameters, TLS certificate and key,
                            the nodes' public keys, sealed keys to relay. No HE secret.
    DIR/clients/client-K/   one bundle per node: HE secret (or none when it is sealed and
                            relayed), the node's identity key, the CA certificate

Every bundle carries a manifest signed by the dealer (see :mod:`fedpriv.deploy.bundle`).

Threshold custody (``--threshold T``, :mod:`fedpriv.crypto.tcustody`): the dealer deals one
Shamir share per node and erases the secret; ``dealer/`` keeps the public key, the share index
map and the federation mask key, never a share. Each node's share and the mask key go into its
bundle, or are sealed to its node key (``dealer/sealed/<id>.sealed``, relayed by the server as
above). The server bundle holds no share and no mask key. ``keys add-node`` adds a node without
a share (it trains, encrypts and reads the global model; it is never asked to decrypt): the
dealer has no share to give, and re-sharing needs T online holders, which is not implemented.

Two ways for the HE secret to reach a node:

* ``bundle`` (default): inside the client bundle, which the data owner carries to the device
  over a channel the server operator does not control (installation image, USB, MDM).
* ``sealed``: the client bundle holds only public material and the node's identity key (or
  none, when the device made its own with ``fedpriv keys node-key``); the secret is sealed to
  the node's public key (:mod:`fedpriv.deploy.seal`), placed in the server bundle, and relayed
  by the server when ``fedpriv run`` starts. The server cannot open it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.config import RunConfig, config_to_dict
from fedpriv.crypto.codec import PublicParams
from fedpriv.deploy.bundle import BundleFile, write_bundle
from fedpriv.deploy.pki import (
    DealerKey,
    TlsCa,
    load_node_public,
    make_server_cert,
    new_node_key,
    node_key_fingerprint,
    node_private_openssh,
    node_public_openssh,
)
from fedpriv.deploy.seal import SealContext, seal_secret
from fedpriv.errors import ConfigError, CryptoError
from fedpriv.fileio import atomic_write_bytes, atomic_write_text

__all__ = [
    "DealResult",
    "add_node",
    "init_federation",
    "model_sizing",
    "write_node_key",
]

DEALER_STATE = "dealer.json"
_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class DealResult:
    """What a dealer command wrote."""

    out: Path
    federation: str
    dealer_fingerprint: str
    server_bundle: Path
    client_bundles: dict[str, Path]
    params_fingerprint: str
    scheme: str
    num_values: int
    max_clients: int
    max_weight: int
    sealed: list[str]
    num_nodes: int = 0
    threshold: int = 0
    """Threshold custody: T (0 under shared custody)."""

    @property
    def over_capacity(self) -> bool:
        """More nodes than updates a round may sum (runs must then sample fewer)."""
        return self.num_nodes > self.max_clients


def model_sizing(cfg: RunConfig) -> tuple[int, int]:
    """Number of model values and the default largest weight for ``cfg``.

    The weight bound is ``encryption.max_examples_per_client`` when set, else the largest
    partition of the config's dataset over ``federation.num_clients`` (what simulation uses).
    Runs every check a simulation runs first (:func:`fedpriv.runs.prepare.prepare_run`).
    """
    from fedpriv.runs.prepare import prepare_run

    prep = prepare_run(cfg)
    return prep.num_values, prep.max_weight


def _owner_dir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    p.chmod(0o700)
    return p


def _write_secret(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data, mode=0o600)


def write_node_key(out: Path) -> tuple[Path, Path, str]:
    """Generate a node identity key on the device itself (``fedpriv keys node-key``).

    Returns
    -------
    (private path, public path, fingerprint)
    """
    _owner_dir(out)
    key = new_node_key()
    priv, pub = out / "node.key", out / "node.pub"
    if priv.exists():
        raise CryptoError(f"{priv} exists; refusing to overwrite a node identity key")
    _write_secret(priv, node_private_openssh(key))
    atomic_write_text(pub, node_public_openssh(key.public_key()).decode(), mode=0o644)
    return priv, pub, node_key_fingerprint(key.public_key())


class _Dealer:
    """Everything in ``DIR/dealer``; rewrites bundles from it."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.dir = out / "dealer"

    # -- persistence ----------------------------------------------------------------------
    def load_state(self) -> dict[str, Any]:
        path = self.dir / DEALER_STATE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CryptoError(
                f"{path} not found: `fedpriv keys add-node` needs the folder `fedpriv keys init` "
                "wrote (with its dealer/ subfolder)"
            ) from None
        except ValueError as exc:
            raise CryptoError(f"{path} is corrupt: {exc}") from None
        if not isinstance(doc, dict) or "federation" not in doc:
            raise CryptoError(f"{path} is not a fedpriv dealer state file")
        return doc

    def save_state(self, doc: dict[str, Any]) -> None:
        atomic_write_text(
            self.dir / DEALER_STATE, json.dumps(doc, indent=2, sort_keys=True), mode=0o600
        )

    def signing_key(self) -> DealerKey:
        return DealerKey.from_pem(self.dir.joinpath("signing.key").read_bytes())

    def params_text(self) -> str:
        return self.dir.joinpath("params.json").read_text(encoding="utf-8")

    def secret(self) -> bytes | None:
        p = self.dir / "he_secret.key"
        if not p.exists():
            return None
        from fedpriv.crypto import KeyHolder

        return KeyHolder.load(p).to_bytes()

    def threshold(self, doc: dict[str, Any]) -> bool:
        return doc.get("key_custody") == "threshold"

    def threshold_public_files(self) -> dict[str, BundleFile]:
        """Public threshold material every bundle carries (never a share or the mask key)."""
        from fedpriv.crypto.tcustody import PARTIES_FILE, PUBLIC_KEY_FILE

        return {
            name: BundleFile(self.dir.joinpath(name).read_bytes())
            for name in (PUBLIC_KEY_FILE, PARTIES_FILE)
        }

    def mask_key(self) -> bytes:
        from fedpriv.crypto.tcustody import MASK_KEY_FILE, load_mask_key

        return load_mask_key(self.dir / MASK_KEY_FILE)

    # -- bundles --------------------------------------------------------------------------
    def write_server_bundle(self, doc: dict[str, Any]) -> Path:
        dealer = self.signing_key()
        files: dict[str, BundleFile] = {
            "params.json": BundleFile(self.params_text().encode()),
            "ca.crt": BundleFile(self.dir.joinpath("ca.crt").read_bytes()),
            "server.crt": BundleFile(self.dir.joinpath("server.crt").read_bytes()),
            "server.key": BundleFile(self.dir.joinpath("server.key").read_bytes(), 0o600),
        }
        # The server's registry of update-signing keys: each node signs its updates with its
        # identity key (fedpriv.crypto.identity), the same key Flower authenticates it with.
        registry = {cid: node["public_key"].strip() for cid, node in doc["nodes"].items()}
        files["identities.json"] = BundleFile(
            (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode()
        )
        secret = None
        if self.threshold(doc):
            files.update(self.threshold_public_files())
        for cid, node in sorted(doc["nodes"].items()):
            files[f"nodes/{cid}.pub"] = BundleFile(node["public_key"].encode())
            if node["delivery"] == "sealed" and self.threshold(doc):
                # Sealed once, when the share was dealt; the dealer cannot seal it again.
                sealed = self.dir / "sealed" / f"{cid}.sealed"
                if sealed.exists():
                    files[f"relay/{cid}.sealed"] = BundleFile(sealed.read_bytes())
            elif node["delivery"] == "sealed":
                secret = secret if secret is not None else self.secret()
                if secret is None:
                    continue
                files[f"relay/{cid}.sealed"] = BundleFile(
                    seal_secret(
                        secret,
                        load_node_public(node["public_key"].encode()),
                        SealContext(doc["federation"], cid, doc["params_fingerprint"]),
                        dealer,
                    )
                )
        meta = {
            "federation": doc["federation"],
            "params_fingerprint": doc["params_fingerprint"],
            "scheme": doc["scheme"],
            "hosts": doc["hosts"],
            "clients": sorted(doc["nodes"]),
            **({"key_custody": "threshold"} if self.threshold(doc) else {}),
        }
        return write_bundle(
            self.out / "server", kind="server", meta=meta, files=files, dealer=dealer
        )

    def write_client_bundle(
        self,
        doc: dict[str, Any],
        cid: str,
        private_key: bytes | None,
        share: bytes | None = None,
    ) -> Path:
        """``share``: threshold custody, this node's share file (bundle delivery only)."""
        node = doc["nodes"][cid]
        files: dict[str, BundleFile] = {
            "params.json": BundleFile(self.params_text().encode()),
            "ca.crt": BundleFile(self.dir.joinpath("ca.crt").read_bytes()),
            "node.pub": BundleFile(node["public_key"].encode()),
        }
        if private_key is not None:
            files["node.key"] = BundleFile(private_key, 0o600)
        if self.threshold(doc):
            from fedpriv.crypto.tcustody import MASK_KEY_FILE

            files.update(self.threshold_public_files())
            # Threshold clients check the signed update records of decryption requests.
            registry = {c: n["public_key"].strip() for c, n in doc["nodes"].items()}
            files["identities.json"] = BundleFile(
                (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode()
            )
            if node["delivery"] == "bundle":
                files[MASK_KEY_FILE] = BundleFile(self.mask_key(), 0o600)
                if share is not None:
                    from fedpriv.crypto.threshold import SHARE_FILE_NAME

                    files[SHARE_FILE_NAME] = BundleFile(share, 0o600)
        elif node["delivery"] == "bundle":
            secret = self.secret()
            if secret is not None:
                files["secret.key"] = BundleFile(secret, 0o600)
        meta = {
            "federation": doc["federation"],
            "client_id": cid,
            "delivery": node["delivery"],
            "node_key": node["fingerprint"],
            "params_fingerprint": doc["params_fingerprint"],
            "scheme": doc["scheme"],
            "hosts": doc["hosts"],
            **(
                {"key_custody": "threshold", "share": share is not None or _sealed_share(self, cid)}
                if self.threshold(doc)
                else {}
            ),
        }
        target = self.out / "clients" / cid
        _owner_dir(target.parent)
        return write_bundle(
            target, kind="client", meta=meta, files=files, dealer=self.signing_key()
        )


def _deal_shared(
    dealer: _Dealer, sized: RunConfig, *, num_values: int, max_examples: int
) -> PublicParams:
    """Shared custody: one HE secret, kept in ``dealer/`` (to seal for nodes added later)."""
    from fedpriv.keys import deal_keys

    with tempfile.TemporaryDirectory(dir=dealer.dir) as tmp:
        params = deal_keys(sized, num_values=num_values, max_weight=max_examples, out=Path(tmp))
        params_text = (Path(tmp) / "server" / "params.json").read_text(encoding="utf-8")
        atomic_write_text(dealer.dir / "params.json", params_text, mode=0o644)
        secret_file = Path(tmp) / "client" / "secret.key"
        if secret_file.exists():
            _write_secret(dealer.dir / "he_secret.key", secret_file.read_bytes())
    return params


def _sealed_share(dealer: _Dealer, cid: str) -> bool:
    return (dealer.dir / "sealed" / f"{cid}.sealed").exists()


def _deal_threshold(
    dealer: _Dealer,
    sized: RunConfig,
    cfg: RunConfig,
    *,
    nodes: int,
    num_values: int,
    max_examples: int,
) -> tuple[Any, dict[str, bytes]]:
    """Deal a threshold key for ``client-0..nodes-1``; returns (params, share file per node).

    The dealer folder keeps only public material and the mask key; the shares are returned
    (to go into bundles or be sealed) and never written under ``dealer/``.
    """
    from fedpriv.crypto.tcustody import MASK_KEY_FILE, PARTIES_FILE, PUBLIC_KEY_FILE

    t = cfg.encryption.threshold or nodes // 2 + 1
    if nodes < 2 or not 2 <= t <= nodes:
        raise ConfigError(
            f"threshold custody: the threshold must be in 2..{nodes} (the number of nodes, each "
            f"holding one share), got {t}"
        )
    from fedpriv.crypto.tcustody import deal_threshold_keys

    value_range = sized.encryption.value_range
    weight = max_examples
    if sized.client_dp:
        from fedpriv.privacy.client_level import client_level_plan

        weight = 1
        value_range += client_level_plan(sized, sized.privacy.client_clip_norm).headroom
    sized = dataclasses.replace(
        sized, encryption=dataclasses.replace(sized.encryption, threshold=t)
    )
    cids = [f"client-{i}" for i in range(nodes)]
    shares: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(dir=dealer.dir) as tmp:
        out = Path(tmp)
        params = deal_threshold_keys(
            sized,
            num_values=num_values,
            max_weight=weight,
            value_range=value_range,
            out=out,
            client_ids=cids,
        )
        for name in ("params.json", PUBLIC_KEY_FILE, PARTIES_FILE):
            atomic_write_bytes(dealer.dir / name, (out / "server" / name).read_bytes(), mode=0o644)
        _write_secret(dealer.dir / MASK_KEY_FILE, (out / "client" / MASK_KEY_FILE).read_bytes())
        for cid in cids:
            path = out / "client" / "shares" / f"{cid}.fpkey"
            shares[cid] = path.read_bytes()
            path.write_bytes(bytes(len(shares[cid])))  # overwrite before the folder goes
    return params, shares


def _seal_threshold(dealer: _Dealer, doc: dict[str, Any], cid: str, share: bytes | None) -> None:
    """Seal ``cid``'s share (or none) and the mask key to its node key, once."""
    from fedpriv.crypto.tcustody import pack_node_keys

    blob = seal_secret(
        pack_node_keys(share or b"", dealer.mask_key()),
        load_node_public(doc["nodes"][cid]["public_key"].encode()),
        SealContext(doc["federation"], cid, doc["params_fingerprint"]),
        dealer.signing_key(),
    )
    target = _owner_dir(dealer.dir / "sealed") / f"{cid}.sealed"
    atomic_write_bytes(target, blob, mode=0o600)


def _check_cid(cid: str) -> str:
    if not _CID.match(cid):
        raise ConfigError(
            f"client id {cid!r}: use 1-64 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )
    return cid


def _result(dealer: _Dealer, doc: dict[str, Any], written: dict[str, Path]) -> DealResult:
    return DealResult(
        out=dealer.out,
        federation=doc["federation"],
        dealer_fingerprint=dealer.signing_key().fingerprint(),
        server_bundle=dealer.out / "server",
        client_bundles=written,
        params_fingerprint=doc["params_fingerprint"],
        scheme=doc["scheme"],
        num_values=int(doc["num_values"]),
        max_clients=int(doc["max_clients"]),
        max_weight=int(doc["max_weight"]),
        sealed=sorted(c for c, n in doc["nodes"].items() if n["delivery"] == "sealed"),
        num_nodes=len(doc["nodes"]),
        threshold=int(doc.get("threshold", 0)),
    )


def _new_node(
    doc: dict[str, Any], cid: str, delivery: str, public_key: bytes | None
) -> bytes | None:
    """Register ``cid`` in the dealer state; return the private key when the dealer made it."""
    if cid in doc["nodes"]:
        raise ConfigError(f"client id {cid!r} already exists in this federation")
    if public_key is None:
        key = new_node_key()
        pub, priv = key.public_key(), node_private_openssh(key)
    else:
        pub, priv = load_node_public(public_key), None
    doc["nodes"][cid] = {
        "public_key": node_public_openssh(pub, cid).decode(),
        "fingerprint": node_key_fingerprint(pub),
        "delivery": delivery,
        "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return priv


def init_federation(
    cfg: RunConfig,
    out: Path,
    *,
    nodes: int,
    hosts: Sequence[str] = (),
    sealed: bool = False,
    max_examples: int | None = None,
    max_clients: int | None = None,
    num_values: int | None = None,
    force: bool = False,
) -> DealResult:
    """Create a federation: HE keys, TLS CA, node identities, signed bundles.

    Parameters
    ----------
    cfg : RunConfig
        Sizes the HE parameters (model size, encryption settings).
    out : Path
        Output folder (see the module docstring for its layout).
    nodes : int
        Number of client bundles (``client-0`` ... ``client-{nodes-1}``).
    hosts : sequence of str
        Extra names/IPs for the server certificate (``127.0.0.1``/``localhost`` always).
    sealed : bool
        Deliver the HE secret sealed through the server instead of inside the bundles.
    max_examples : int, optional
        Largest example count a client may weight its update with (default: see
        :func:`model_sizing`); larger local datasets are capped (reported, never silent).
    max_clients : int, optional
        Largest number of updates summed in a round (default: ``max(nodes, clients per
        round)``); leave room here for nodes you will add later.
    num_values : int, optional
        Model size, when already known (skips building the model).
    force : bool
        Replace an existing federation in ``out``.

    Returns
    -------
    DealResult
    """
    from fedpriv.keys import max_clients_per_round

    if nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    out = Path(out).expanduser().resolve()
    if (out / "dealer" / DEALER_STATE).exists() and not force:
        raise ConfigError(
            f"{out} already holds a federation; use `fedpriv keys add-node` to add nodes, or "
            "another --out (or --force to replace it: every old bundle stops working)"
        )
    if num_values is None or max_examples is None:
        nv, mw = model_sizing(cfg)
        num_values = num_values or nv
        max_examples = max_examples or mw
    clients = max(nodes, max_clients_per_round(cfg)) if max_clients is None else max_clients
    if clients < 1 or max_examples < 1:
        raise ConfigError("--max-clients and --max-examples must be positive")
    sized = cfg
    if clients != max_clients_per_round(cfg):
        sized = dataclasses.replace(
            cfg,
            federation=dataclasses.replace(cfg.federation, num_clients=clients, fraction_train=1.0),
        )
    dealer = _Dealer(out)
    _owner_dir(dealer.dir)
    threshold = cfg.he_on and cfg.encryption.key_custody == "threshold"
    shares: dict[str, bytes] = {}
    for stale in ("he_secret.key", "mask.key", "public_key.bin", "parties.json"):
        dealer.dir.joinpath(stale).unlink(missing_ok=True)
    if (dealer.dir / "sealed").exists():
        shutil.rmtree(dealer.dir / "sealed")
    if threshold:
        params, shares = _deal_threshold(
            dealer, sized, cfg, nodes=nodes, num_values=num_values, max_examples=max_examples
        )
    else:
        params = _deal_shared(dealer, sized, num_values=num_values, max_examples=max_examples)
    signing = DealerKey.generate()
    _write_secret(dealer.dir / "signing.key", signing.to_pem())
    ca = TlsCa.generate()
    _write_secret(dealer.dir / "ca.key", ca.key_pem())
    atomic_write_text(dealer.dir / "ca.crt", ca.cert_pem().decode(), mode=0o644)
    skey, scert = make_server_cert(ca, hosts)
    _write_secret(dealer.dir / "server.key", skey)
    atomic_write_text(dealer.dir / "server.crt", scert.decode(), mode=0o644)
    doc: dict[str, Any] = {
        "federation": uuid.uuid4().hex,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "hosts": sorted(set(hosts)),
        "scheme": params.scheme,
        "params_fingerprint": params.fingerprint(),
        "num_values": params.num_values,
        "max_clients": params.max_clients,
        "max_weight": int(getattr(params, "max_weight", max_examples)),
        "config": config_to_dict(cfg),
        "next_index": nodes,
        "nodes": {},
    }
    if threshold:
        doc["key_custody"] = "threshold"
        doc["threshold"] = int(getattr(params, "threshold", 0))
    privs: dict[str, bytes | None] = {}
    for i in range(nodes):
        cid = f"client-{i}"
        privs[cid] = _new_node(doc, cid, "sealed" if sealed else "bundle", None)
    if threshold and sealed:
        for cid in privs:
            _seal_threshold(dealer, doc, cid, shares[cid])
    dealer.save_state(doc)
    dealer.write_server_bundle(doc)
    written = {
        cid: dealer.write_client_bundle(doc, cid, priv, None if sealed else shares.get(cid))
        for cid, priv in privs.items()
    }
    shares.clear()  # the only copies now are in the bundles or sealed to the nodes
    return _result(dealer, doc, written)


def add_node(
    out: Path,
    *,
    client_id: str | None = None,
    sealed: bool = False,
    public_key: bytes | None = None,
) -> DealResult:
    """Add one node to an existing federation and re-sign the server bundle.

    Parameters
    ----------
    out : Path
        The folder ``fedpriv keys init`` wrote.
    client_id : str, optional
        Default ``client-<next index>``.
    sealed : bool
        Deliver the HE secret sealed through the server.
    public_key : bytes, optional
        The node's own public key (OpenSSH line from ``fedpriv keys node-key``); its private
        key then never leaves the device and the bundle carries none.

    Returns
    -------
    DealResult
        ``client_bundles`` holds the new bundle only. Copy the re-signed server bundle to the
        server and register the node (restart ``fedpriv server start`` or run
        ``fedpriv server register``).
    """
    out = Path(out).expanduser().resolve()
    dealer = _Dealer(out)
    doc = dealer.load_state()
    if client_id is None:
        client_id = f"client-{int(doc['next_index'])}"
        doc["next_index"] = int(doc["next_index"]) + 1
    _check_cid(client_id)
    priv = _new_node(doc, client_id, "sealed" if sealed else "bundle", public_key)
    if dealer.threshold(doc) and sealed:
        _seal_threshold(dealer, doc, client_id, None)  # the mask key only: no share to give
    dealer.save_state(doc)
    dealer.write_server_bundle(doc)
    path = dealer.write_client_bundle(doc, client_id, priv)
    return _result(dealer, doc, {client_id: path})
