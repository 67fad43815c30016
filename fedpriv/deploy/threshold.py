"""Threshold custody in a deployment: a device's share and mask key, the registry it checks with.

* :func:`install_bundle_keys` copies a client bundle's threshold material into the device's key
  folder (``fedpriv client start``): public key, share index map, identity registry, and with
  bundle delivery the share and the mask key (owner-only).
* :func:`store_sealed_keys` stores what the sealed-key relay delivered (share and mask key).
* :func:`registry_proof` / :func:`verified_registry`: the server bundle's signed manifest and
  identity registry travel with each decryption request, so a device checks the signed update
  records of nodes added after its own bundle was made (``keys add-node``) against a registry
  the dealer signed, not one the server wrote.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fedpriv.errors import CryptoError

__all__ = [
    "clear_threshold_keys",
    "install_bundle_keys",
    "registry_proof",
    "store_sealed_keys",
    "verified_registry",
]

_PUBLIC = ("public_key.bin", "parties.json", "identities.json")


def clear_threshold_keys(keys: Path) -> None:
    """Forget a re-keyed federation's share and mask key."""
    from fedpriv.crypto.tcustody import MASK_KEY_FILE
    from fedpriv.crypto.threshold import SHARE_FILE_NAME

    for name in (SHARE_FILE_NAME, MASK_KEY_FILE):
        (keys / name).unlink(missing_ok=True)


def install_bundle_keys(bundle: Any, keys: Path) -> bool:
    """Copy a verified client bundle's threshold material into ``keys``; False if it has none.

    The share is loaded (parameters and key id checked) before it is stored.
    """
    from fedpriv.crypto.tcustody import MASK_KEY_FILE, ThresholdPublic, write_mask_key
    from fedpriv.crypto.threshold import SHARE_FILE_NAME, KeyShare
    from fedpriv.fileio import atomic_write_bytes

    if bundle.meta.get("key_custody") != "threshold":
        return False
    for name in _PUBLIC:
        atomic_write_bytes(keys / name, bundle.path(name).read_bytes(), mode=0o644)
    pub = ThresholdPublic.load(keys)
    if bundle.has(MASK_KEY_FILE):
        write_mask_key(keys / MASK_KEY_FILE, bundle.path(MASK_KEY_FILE).read_bytes())
    if bundle.has(SHARE_FILE_NAME):
        share = KeyShare.from_bytes(bundle.path(SHARE_FILE_NAME).read_bytes(), pub.params)
        _check_share(share, pub, str(bundle.meta["client_id"]))
        share.save(keys / SHARE_FILE_NAME)
        share.wipe()
    return True


def _check_share(share: Any, pub: Any, client_id: str) -> None:
    if share.key_id != pub.key_id or share.index != pub.index_of(client_id):
        raise CryptoError(
            f"{client_id}: the key share belongs to another key or another node "
            f"(index {share.index}, the dealer's map says {pub.index_of(client_id)})"
        )


def store_sealed_keys(plain: bytes, keys: Path, client_id: str) -> str:
    """Store a relayed ``pack_node_keys`` blob; returns ``stored`` or ``unchanged``."""
    from fedpriv.crypto.tcustody import (
        MASK_KEY_FILE,
        ThresholdPublic,
        unpack_node_keys,
        write_mask_key,
    )
    from fedpriv.crypto.threshold import SHARE_FILE_NAME, KeyShare

    share_bytes, mask = unpack_node_keys(plain)
    pub = ThresholdPublic.load(keys)
    unchanged = (keys / MASK_KEY_FILE).exists() and (keys / MASK_KEY_FILE).read_bytes() == mask
    if share_bytes:
        share = KeyShare.from_bytes(share_bytes, pub.params)
        _check_share(share, pub, client_id)
        target = keys / SHARE_FILE_NAME
        unchanged = unchanged and target.exists() and target.read_bytes() == share.to_bytes()
        share.save(target)
        share.wipe()
    write_mask_key(keys / MASK_KEY_FILE, mask)
    return "unchanged" if unchanged else "stored"


def registry_proof(folder: Path) -> tuple[str, str, bytes] | None:
    """(identities.json, manifest.json, manifest.sig) of a server bundle, or None (simulation)."""
    import base64

    files = [folder / "identities.json", folder / "manifest.json", folder / "manifest.sig"]
    if not all(p.exists() for p in files):
        return None
    return (
        files[0].read_text(encoding="utf-8"),
        files[1].read_text(encoding="utf-8"),
        base64.b64decode(files[2].read_bytes().strip()),
    )


def verified_registry(node_bundle: Path, proof: tuple[str, str, bytes]) -> dict[str, str]:
    """The identity registry of a server bundle, checked against this node's dealer key.

    Raises
    ------
    CryptoError
        The manifest is not signed by this node's dealer, is of another federation or kind, or
        does not list this registry.
    """
    from fedpriv.deploy.bundle import verify_bundle
    from fedpriv.deploy.pki import load_dealer_public, verify_dealer_signature

    registry, manifest, sig = proof
    mine = verify_bundle(node_bundle, kind="client")
    pub = load_dealer_public(mine.path("dealer.pub").read_bytes())
    if not verify_dealer_signature(pub, sig, manifest.encode()):
        raise CryptoError("identity registry: the server bundle's manifest is not the dealer's")
    meta = json.loads(manifest)
    if meta.get("kind") != "server" or meta.get("federation") != mine.federation:
        raise CryptoError("identity registry: a manifest of another federation or bundle kind")
    digest = hashlib.sha256(registry.encode()).hexdigest()
    if (meta.get("files") or {}).get("identities.json") != digest:
        raise CryptoError("identity registry: not the registry the dealer signed")
    doc = json.loads(registry)
    if not isinstance(doc, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
    ):
        raise CryptoError("identity registry: must map client ids to public keys")
    return doc
