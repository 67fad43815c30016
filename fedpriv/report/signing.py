"""Ed25519 signing keys for privacy reports, and the set of keys a verifier trusts.

One key per run by default. The private key never enters the run folder (whoever can copy the
run folder could otherwise re-sign an edited report): it lives under
``$FEDPRIV_HOME/signing/<run-id>.pem`` (``~/.fedpriv`` by default), mode 0600, or wherever
``--signing-key`` points. The report embeds the public key and its fingerprint, the SHA-256 of the
raw 32-byte public key, in hex.

A valid signature alone proves nothing about *who* signed: anyone can make a fresh key. Trust comes
from pinning: a fingerprint (or public key file) handed to the verifier out of band, plus the keys
whose private halves sit in this user's own ``$FEDPRIV_HOME/signing`` (the reports this machine
signed).
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedpriv.errors import CryptoError
from fedpriv.fileio import fedpriv_home
from fedpriv.report.canonical import sha256_bytes

__all__ = [
    "fedpriv_home",
    "fingerprint",
    "load_or_create_key",
    "load_private_key",
    "local_trusted_fingerprints",
    "parse_public_key",
    "public_key_pem",
    "resolve_trusted",
    "run_key_path",
    "sign",
    "signature_valid",
]

_FP = re.compile(r"^[0-9a-f]{64}$")


def run_key_path(run_id: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in run_id)
    return fedpriv_home() / "signing" / f"{safe}.pem"


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key bytes, lowercase hex (64 characters)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_bytes(raw)


def public_key_pem(key: Ed25519PublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def parse_public_key(pem: str) -> Ed25519PublicKey:
    """Load an Ed25519 public key from PEM text. Raises CryptoError if it is not one."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise CryptoError(f"expected an Ed25519 public key, got {type(key).__name__}")
    return key


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read an unencrypted PKCS#8 PEM Ed25519 private key."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CryptoError(f"{path}: cannot read signing key ({exc})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CryptoError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CryptoError(f"{path}: expected an Ed25519 key, got {type(key).__name__}")
    return key


def load_or_create_key(run_id: str, path: Path | None = None) -> tuple[Ed25519PrivateKey, Path]:
    """The signing key for ``run_id``: ``path`` if given (must exist), else the per-run key,
    created on first use with owner-only permissions."""
    if path is not None:
        return load_private_key(path), path
    target = run_key_path(run_id)
    if target.exists():
        return load_private_key(target), target
    target.parent.mkdir(parents=True, exist_ok=True)
    target.parent.chmod(0o700)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL: two builders racing on one run must not overwrite each other's key.
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key, target


def sign(key: Ed25519PrivateKey, payload: bytes) -> str:
    """Base64 Ed25519 signature of ``payload``."""
    return base64.b64encode(key.sign(payload)).decode("ascii")


def signature_valid(key: Ed25519PublicKey, signature_b64: str, payload: bytes) -> bool:
    try:
        sig = base64.b64decode(signature_b64, validate=True)
    except ValueError:
        return False
    try:
        key.verify(sig, payload)
    except InvalidSignature:
        return False
    return True


def local_trusted_fingerprints() -> set[str]:
    """Fingerprints of the signing keys this user holds under ``$FEDPRIV_HOME/signing``."""
    folder = fedpriv_home() / "signing"
    out: set[str] = set()
    if not folder.is_dir():
        return out
    for pem in sorted(folder.glob("*.pem")):
        try:
            out.add(fingerprint(load_private_key(pem).public_key()))
        except CryptoError:
            continue  # an unreadable file there is not a key we can vouch for
    return out


def resolve_trusted(specs: list[str]) -> set[str]:
    """Turn ``--trusted-key`` values into fingerprints.

    Each value is a 64-hex-digit fingerprint (``SHA256:`` prefix and ``:`` separators allowed)
    or the path of a PEM file holding an Ed25519 public or private key.
    """
    out: set[str] = set()
    for spec in specs:
        cleaned = spec.strip().lower().removeprefix("sha256:").replace(":", "")
        if _FP.match(cleaned):
            out.add(cleaned)
            continue
        p = Path(spec).expanduser()
        if not p.is_file():
            raise CryptoError(
                f"--trusted-key {spec!r}: neither a 64-hex-digit fingerprint nor a PEM file"
            )
        text = p.read_text(encoding="ascii", errors="replace")
        if "PRIVATE KEY" in text:
            out.add(fingerprint(load_private_key(p).public_key()))
        else:
            out.add(fingerprint(parse_public_key(text)))
    return out
