"""Key material for deployment: a TLS CA, the server certificate, node and dealer keys.

Everything here uses ``cryptography`` only:

* the TLS CA and server certificate are ECDSA P-384 X.509 (SANs for ``127.0.0.1``,
  ``localhost`` and any ``--server-host`` names);
* each node's identity key is ECDSA P-384 in OpenSSH format, which is what
  ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode register`` take; the
  same public key is what the dealer seals the HE secret to (see :mod:`fedpriv.deploy.seal`);
* the dealer signs bundles and sealed keys with Ed25519.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Iterable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedpriv.errors import CryptoError

__all__ = [
    "CA_DAYS",
    "SERVER_CERT_DAYS",
    "DealerKey",
    "TlsCa",
    "fingerprint",
    "load_dealer_public",
    "load_node_private",
    "load_node_public",
    "make_server_cert",
    "new_node_key",
    "node_private_openssh",
    "node_public_openssh",
    "verify_server_cert",
]

CA_DAYS = 3650
SERVER_CERT_DAYS = 825
CURVE = ec.SECP384R1()


def fingerprint(public_bytes: bytes) -> str:
    """OpenSSH-style fingerprint ``SHA256:<base64>`` of a public key encoding.

    Parameters
    ----------
    public_bytes : bytes
        Any canonical encoding of the public key (raw Ed25519 bytes, OpenSSH line...).

    Returns
    -------
    str
        ``"SHA256:"`` followed by unpadded base64 of the digest.
    """
    digest = hashlib.sha256(public_bytes).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# ----------------------------------------------------------------------------- dealer key
class DealerKey:
    """The dealer's Ed25519 signing key (kept by the data owners, never in a bundle)."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> DealerKey:
        """Make a fresh signing key."""
        return cls(ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes) -> DealerKey:
        """Load a key written by :meth:`to_pem`."""
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"dealer signing key is unreadable: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise CryptoError("dealer signing key is not an Ed25519 key")
        return cls(key)

    def to_pem(self) -> bytes:
        """PKCS#8 PEM, unencrypted (the dealer folder is owner-only)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def public_pem(self) -> bytes:
        """The verification key, SubjectPublicKeyInfo PEM."""
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def fingerprint(self) -> str:
        """Fingerprint of the raw public key (what operators compare out of band)."""
        return dealer_fingerprint(self._key.public_key())

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature over ``data``."""
        return self._key.sign(data)


def dealer_fingerprint(key: ed25519.Ed25519PublicKey) -> str:
    """Fingerprint of an Ed25519 dealer public key."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return fingerprint(raw)


def load_dealer_public(data: bytes) -> ed25519.Ed25519PublicKey:
    """Parse the dealer's public key (PEM) from a bundle; raise CryptoError when unusable."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"dealer public key is unreadable: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise CryptoError("dealer public key is not an Ed25519 key")
    return key


def verify_dealer_signature(key: ed25519.Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is the dealer's signature over ``data``."""
    try:
        key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


# ----------------------------------------------------------------------------- node keys
def new_node_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-384 node identity key."""
    return ec.generate_private_key(CURVE)


def node_private_openssh(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The private key in OpenSSH format (``--auth-supernode-private-key``)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )


def node_public_openssh(key: ec.EllipticCurvePublicKey, comment: str = "") -> bytes:
    """One OpenSSH public key line (``flwr supernode register``)."""
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return line + (b" " + comment.encode() if comment else b"") + b"\n"


def load_node_private(data: bytes) -> ec.EllipticCurvePrivateKey:
    """Parse a node private key (OpenSSH or PEM); it must be ECDSA P-384."""
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key = serialization.load_ssh_private_key(data, password=None)
        else:
            key = serialization.load_pem_private_key(data, password=None)  # type: ignore[assignment]
    except (ValueError, TypeError) as exc:
        raise CryptoError(f"node private key is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != CURVE.name:
        raise CryptoError("node private key must be ECDSA P-384 (secp384r1)")
    return key


def load_node_public(data: bytes) -> ec.EllipticCurvePublicKey:
    """Parse a node public key line (OpenSSH); it must be ECDSA P-384."""
    try:
        key = serialization.load_ssh_public_key(data.strip())
    except (ValueError, TypeError, IndexError) as exc:
        raise CryptoError(f"node public key is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != CURVE.name:
        raise CryptoError("node public key must be ECDSA P-384 (ecdsa-sha2-nistp384)")
    return key


def node_key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """Fingerprint of a node public key (over its OpenSSH encoding, without comment)."""
    return fingerprint(node_public_openssh(key).split(b" ")[1])


# ----------------------------------------------------------------------------- TLS
def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TlsCa:
    """A private certificate authority for one federation (ECDSA P-384)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert

    @classmethod
    def generate(cls, name: str = "fedpriv federation CA") -> TlsCa:
        """Make a self-signed CA certificate valid for :data:`CA_DAYS` days."""
        key = ec.generate_private_key(CURVE)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA384())
        )
        return cls(key, cert)

    @classmethod
    def load(cls, key_pem: bytes, cert_pem: bytes) -> TlsCa:
        """Load a CA written by :meth:`key_pem` / :meth:`cert_pem`."""
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except (ValueError, TypeError) as exc:
            raise CryptoError(f"TLS CA is unreadable: {exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CryptoError("TLS CA key is not an ECDSA key")
        return cls(key, cert)

    def key_pem(self) -> bytes:
        """The CA private key, PKCS#8 PEM (dealer folder only)."""
        return _pem_key(self.key)

    def cert_pem(self) -> bytes:
        """The CA certificate (goes into every bundle: clients verify the server with it)."""
        return self.cert.public_bytes(serialization.Encoding.PEM)


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for h in hosts:
        h = h.strip()
        if not h or h in seen:
            continue
        seen.add(h)
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_server_cert(ca: TlsCa, hosts: Iterable[str]) -> tuple[bytes, bytes]:
    """Issue the SuperLink's TLS certificate.

    Parameters
    ----------
    ca : TlsCa
        The federation CA.
    hosts : iterable of str
        Host names and IP addresses clients use to reach the SuperLink (``127.0.0.1`` and
        ``localhost`` are always added).

    Returns
    -------
    (key_pem, cert_pem) : tuple of bytes
    """
    all_hosts = ["127.0.0.1", "localhost", "::1", *hosts]
    key = ec.generate_private_key(CURVE)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedpriv superlink")]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_CERT_DAYS))
        .add_extension(_san(all_hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA384())
    )
    return _pem_key(key), cert.public_bytes(serialization.Encoding.PEM)


def verify_server_cert(ca_pem: bytes, cert_pem: bytes) -> list[str]:
    """Check that ``cert_pem`` was issued by ``ca_pem`` and is in its validity window.

    Returns
    -------
    list of str
        The certificate's SAN entries (for messages).

    Raises
    ------
    CryptoError
        The certificate is unreadable, expired, or not signed by the CA.
    """
    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise CryptoError(
            f"server TLS certificate does not verify against the bundle CA: {exc}"
        ) from None
    now = _now()
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CryptoError(
            f"server TLS certificate is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d}); issue a new one with `fedpriv keys init`"
        )
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v.value) for v in san]
