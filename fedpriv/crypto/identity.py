"""Client identity keys and the signatures on everything a client reports.

Every train or evaluation reply carries a *client record* (see :mod:`fedpriv.privacy.ledger`)
signed with the client's identity key. A train record names the run, round, client id and the
Flower node id it was sent from, the SHA-256 of the update and of its metrics, and the client's
DP history and epsilon. The server checks the signature against its registry of public keys,
and the node id against the node the message really came from, before the update can touch the
sum: that rejects forged senders, updates replayed from another round, run or node (a registered
node resending another client's signed update), and bytes altered on the way. The same signature
lets anyone verify the privacy ledger later, line by line, without trusting the server.

Keys are Ed25519 (simulation default) or ECDSA P-384 (the SuperNode identity keys the deployment
dealer creates, in OpenSSH format); both load through ``cryptography``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedpriv.errors import CryptoError, WireError

__all__ = [
    "IdentityRegistry",
    "PrivateIdentity",
    "generate_identity",
    "load_private_identity",
    "public_openssh",
    "record_signature_message",
    "sign_record",
]

PrivateIdentity = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicIdentity = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
MAX_SIGNATURE_BYTES = 256


def generate_identity() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def public_openssh(key: PrivateIdentity) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def private_pem(key: PrivateIdentity) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_identity(path: Path) -> PrivateIdentity:
    """Load a PEM (PKCS8) or OpenSSH private key; only Ed25519 and EC keys are accepted."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CryptoError(f"{path}: cannot read identity key ({exc})") from None
    key: Any
    try:
        if b"OPENSSH PRIVATE KEY" in data:
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"{path}: not a usable private key ({exc})") from None
    if not isinstance(key, (ed25519.Ed25519PrivateKey, ec.EllipticCurvePrivateKey)):
        raise CryptoError(
            f"{path}: identity keys must be Ed25519 or ECDSA, got {type(key).__name__}"
        )
    return key


def record_signature_message(digest_hex: str) -> bytes:
    """The exact bytes signed for a client record: domain-separated, then its SHA-256."""
    return b"fedpriv-client-record-v1\x00" + bytes.fromhex(digest_hex)


def sign_record(key: PrivateIdentity, digest_hex: str) -> bytes:
    """Sign a client record (given by its SHA-256 hex digest) with the client's identity key."""
    msg = record_signature_message(digest_hex)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(msg)
    return key.sign(msg, ec.ECDSA(hashes.SHA384()))


class IdentityRegistry:
    """The server's map of client id -> public identity key (public material only)."""

    def __init__(self, keys: Mapping[str, PublicIdentity]) -> None:
        self._keys = dict(keys)

    def __contains__(self, client_id: str) -> bool:
        return client_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_openssh(cls, entries: Mapping[str, str]) -> IdentityRegistry:
        keys: dict[str, PublicIdentity] = {}
        for cid, text in entries.items():
            try:
                pub = serialization.load_ssh_public_key(text.encode())
            except (ValueError, TypeError) as exc:
                raise CryptoError(
                    f"identity registry: key for {cid!r} is not an OpenSSH public key ({exc})"
                ) from None
            if not isinstance(pub, (ed25519.Ed25519PublicKey, ec.EllipticCurvePublicKey)):
                raise CryptoError(f"identity registry: key for {cid!r} must be Ed25519 or ECDSA")
            keys[cid] = pub
        return cls(keys)

    @classmethod
    def load(cls, path: Path) -> IdentityRegistry:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CryptoError(f"{path}: identity registry not found") from None
        except (OSError, ValueError) as exc:
            raise CryptoError(f"{path}: cannot read identity registry ({exc})") from None
        if not isinstance(doc, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in doc.items()
        ):
            raise CryptoError(
                f"{path}: identity registry must map client ids to OpenSSH public keys"
            )
        return cls.from_openssh(doc)

    def to_openssh(self) -> dict[str, str]:
        return {
            cid: k.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            ).decode()
            for cid, k in self._keys.items()
        }

    def fingerprint(self) -> str:
        """SHA-256 over the canonical registry (client id -> OpenSSH key): names the key set."""
        import hashlib

        return hashlib.sha256(
            json.dumps(self.to_openssh(), sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest()

    def verify_record(self, client_id: str, digest_hex: str, signature: bytes) -> None:
        """Raise WireError unless ``signature`` is ``client_id``'s over the record ``digest_hex``."""
        pub = self._keys.get(client_id)
        if pub is None:
            raise WireError(f"unknown client id {client_id!r}: no registered identity key")
        if not signature:
            raise WireError("record is not signed")
        if len(signature) > MAX_SIGNATURE_BYTES:
            raise WireError("signature too long")
        try:
            msg = record_signature_message(digest_hex)
        except ValueError:
            raise WireError("record digest is not hex") from None
        try:
            if isinstance(pub, ed25519.Ed25519PublicKey):
                pub.verify(signature, msg)
            else:
                pub.verify(signature, msg, ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            raise WireError(
                f"bad signature: the record was not signed by {client_id!r}'s key, or was altered"
            ) from None
