"""Sealed key delivery: the HE secret encrypted to one node's public key, signed by the dealer.

The dealer seals; the server stores and relays the opaque blob; only the node holding the
matching private key can open it, and it only accepts it when the dealer signed it for exactly
this federation, client id, node key and parameter set.

Construction (ECIES-style, from ``cryptography``):

1. an ephemeral ECDH P-384 key pair; shared secret with the node's P-384 identity key;
2. HKDF-SHA256 (random 32-byte salt, ``info`` = domain label + federation + client id) to a
   256-bit AES-GCM key;
3. AES-256-GCM with a random 96-bit nonce; the JSON header (federation, client id, node key
   fingerprint, parameters fingerprint, ephemeral public key, salt, nonce) is the AAD;
4. an Ed25519 dealer signature over magic + header + ciphertext.

Blob layout: ``FPSEAL1\\n`` | u32 header length | header | u32 ciphertext length | ciphertext |
64-byte signature.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedpriv.deploy.pki import CURVE, DealerKey, node_key_fingerprint, verify_dealer_signature
from fedpriv.errors import CryptoError

__all__ = ["MAGIC", "SealContext", "open_sealed", "seal_secret"]

MAGIC = b"FPSEAL1\n"
_U32 = struct.Struct(">I")
_SIG_LEN = 64
_INFO = b"fedpriv/seal/v1"
_MAX_BLOB = 16 << 20


@dataclass(frozen=True)
class SealContext:
    """What a sealed key is bound to (all of it goes into the AAD and the signature)."""

    federation: str
    client_id: str
    params_fingerprint: str

    def info(self) -> bytes:
        """HKDF ``info``: domain label plus the identities, length-prefixed."""
        parts = [_INFO, self.federation.encode(), self.client_id.encode()]
        return b"".join(_U32.pack(len(p)) + p for p in parts)


def _derive(shared: bytes, salt: bytes, ctx: SealContext) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=ctx.info()).derive(shared)


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def seal_secret(
    secret: bytes,
    node_public: ec.EllipticCurvePublicKey,
    ctx: SealContext,
    dealer: DealerKey,
) -> bytes:
    """Encrypt ``secret`` to ``node_public`` and sign it as the dealer.

    Parameters
    ----------
    secret : bytes
        The serialized HE key (``KeyHolder.to_bytes()``).
    node_public : EllipticCurvePublicKey
        The node's registered P-384 identity key.
    ctx : SealContext
        Federation, client id and parameter fingerprint the blob is bound to.
    dealer : DealerKey
        Signs the blob.

    Returns
    -------
    bytes
        The sealed blob (safe to hand to the server).
    """
    eph = ec.generate_private_key(CURVE)
    shared = eph.exchange(ec.ECDH(), node_public)
    salt, nonce = os.urandom(32), os.urandom(12)
    header = {
        "v": 1,
        "alg": "ECDH-P384+HKDF-SHA256+AES-256-GCM",
        "federation": ctx.federation,
        "client_id": ctx.client_id,
        "node_key": node_key_fingerprint(node_public),
        "params": ctx.params_fingerprint,
        "epk": _b64(
            eph.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        ),
        "salt": _b64(salt),
        "nonce": _b64(nonce),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    hbytes = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    ct = AESGCM(_derive(shared, salt, ctx)).encrypt(nonce, secret, hbytes)
    body = MAGIC + _U32.pack(len(hbytes)) + hbytes + _U32.pack(len(ct)) + ct
    return body + dealer.sign(body)


def _parse(blob: bytes) -> tuple[bytes, bytes, dict[str, Any], bytes, bytes]:
    if len(blob) > _MAX_BLOB or not blob.startswith(MAGIC):
        raise CryptoError("sealed key: not a fedpriv sealed key blob")
    try:
        off = len(MAGIC)
        (hn,) = _U32.unpack_from(blob, off)
        off += 4
        hbytes = blob[off : off + hn]
        off += hn
        (cn,) = _U32.unpack_from(blob, off)
        off += 4
        ct = blob[off : off + cn]
        off += cn
    except struct.error:
        raise CryptoError("sealed key: truncated blob") from None
    if len(hbytes) != hn or len(ct) != cn or len(blob) != off + _SIG_LEN:
        raise CryptoError("sealed key: inconsistent lengths (truncated or padded blob)")
    try:
        header = json.loads(hbytes)
    except ValueError:
        raise CryptoError("sealed key: header is not JSON") from None
    if not isinstance(header, dict):
        raise CryptoError("sealed key: header is not a JSON object")
    return blob[:off], hbytes, header, ct, blob[off:]


def open_sealed(
    blob: bytes,
    node_private: ec.EllipticCurvePrivateKey,
    dealer_public: ed25519.Ed25519PublicKey,
    expected: SealContext,
) -> bytes:
    """Verify and decrypt a sealed key meant for this node.

    Parameters
    ----------
    blob : bytes
        What the server relayed.
    node_private : EllipticCurvePrivateKey
        This node's identity key.
    dealer_public : Ed25519PublicKey
        The (pinned) dealer key from this node's bundle.
    expected : SealContext
        This node's federation, client id and parameter fingerprint.

    Returns
    -------
    bytes
        The plaintext secret.

    Raises
    ------
    CryptoError
        A bad signature, a blob bound to another federation, client, node key or parameter
        set, or a failed decryption. Nothing is returned unless all checks pass.
    """
    body, hbytes, header, ct, sig = _parse(blob)
    if not verify_dealer_signature(dealer_public, sig, body):
        raise CryptoError(
            "sealed key: the dealer signature does not verify (forged or altered in transit)"
        )
    if header.get("v") != 1:
        raise CryptoError(f"sealed key: unsupported version {header.get('v')!r}")
    mine = node_key_fingerprint(node_private.public_key())
    checks = [
        ("federation", expected.federation),
        ("client_id", expected.client_id),
        ("node_key", mine),
        ("params", expected.params_fingerprint),
    ]
    for field_name, want in checks:
        if header.get(field_name) != want:
            raise CryptoError(
                f"sealed key: made for {field_name} {header.get(field_name)!r}, this node has "
                f"{want!r}; the server relayed another node's key or a key from another federation"
            )
    try:
        epk = ec.EllipticCurvePublicKey.from_encoded_point(
            CURVE, base64.b64decode(header["epk"], validate=True)
        )
        salt = base64.b64decode(header["salt"], validate=True)
        nonce = base64.b64decode(header["nonce"], validate=True)
    except (KeyError, ValueError, TypeError):
        raise CryptoError("sealed key: malformed header fields") from None
    shared = node_private.exchange(ec.ECDH(), epk)
    try:
        return AESGCM(_derive(shared, salt, expected)).decrypt(nonce, ct, hbytes)
    except InvalidTag:
        raise CryptoError("sealed key: decryption failed (not sealed to this node's key)") from None
