"""Signed bundles: a folder of files plus a manifest of their SHA-256, signed by the dealer.

Layout of every bundle::

    BUNDLE/
      manifest.json    {"format", "kind", "federation", ..., "files": {relpath: sha256}}
      manifest.sig     base64 Ed25519 signature of manifest.json's exact bytes
      dealer.pub       the dealer's verification key (PEM)
      ...              the files the manifest lists (and nothing else)

Verification checks the signature, that every listed file exists with its digest, and that no
unlisted file was added. The dealer key in the bundle is only trusted when its fingerprint
matches one pinned out of band (``--dealer-fingerprint``) or on first use (see
:func:`check_pin`): someone who can rewrite a bundle can also swap its key and re-sign it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.deploy.pki import (
    DealerKey,
    dealer_fingerprint,
    load_dealer_public,
    verify_dealer_signature,
)
from fedpriv.errors import CryptoError

__all__ = [
    "BUNDLE_FORMAT",
    "MANIFEST",
    "SIGNATURE",
    "BundleFile",
    "VerifiedBundle",
    "check_pin",
    "verify_bundle",
    "write_bundle",
]

BUNDLE_FORMAT = "fedpriv-bundle/1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
DEALER_PUB = "dealer.pub"
PIN_FILE = "dealer.fingerprint"
_MAX_FILE_BYTES = 64 << 20


@dataclass(frozen=True)
class BundleFile:
    """One file to put into a bundle."""

    data: bytes
    mode: int = 0o644


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose manifest signature and file digests checked out."""

    root: Path
    meta: dict[str, Any]
    dealer_fingerprint: str

    @property
    def kind(self) -> str:
        """``server`` or ``client``."""
        return str(self.meta["kind"])

    @property
    def federation(self) -> str:
        """The federation id the dealer created."""
        return str(self.meta["federation"])

    def path(self, rel: str) -> Path:
        """Absolute path of a listed file."""
        return self.root / rel

    def has(self, rel: str) -> bool:
        """Whether the manifest lists ``rel``."""
        return rel in self.meta["files"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(doc: Mapping[str, Any]) -> bytes:
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def _check_rel(rel: str) -> None:
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts or rel in (MANIFEST, SIGNATURE) or not rel:
        raise ValueError(f"invalid bundle file name {rel!r}")


def write_bundle(
    root: Path,
    *,
    kind: str,
    meta: Mapping[str, Any],
    files: Mapping[str, BundleFile],
    dealer: DealerKey,
) -> Path:
    """Write a complete bundle atomically (built next to ``root``, then renamed into place).

    Parameters
    ----------
    root : Path
        Target folder; an existing bundle there is replaced.
    kind : str
        ``server`` or ``client``.
    meta : mapping
        Extra manifest fields (federation id, client id, ...).
    files : mapping of str to BundleFile
        Relative path -> content and mode. ``dealer.pub`` is added automatically.
    dealer : DealerKey
        Signs the manifest.

    Returns
    -------
    Path
        ``root``.
    """
    all_files = dict(files)
    all_files[DEALER_PUB] = BundleFile(dealer.public_pem())
    for rel in all_files:
        _check_rel(rel)
    manifest = {
        "format": BUNDLE_FORMAT,
        "kind": kind,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "dealer": dealer.fingerprint(),
        **meta,
        "files": {rel: _sha256(f.data) for rel, f in sorted(all_files.items())},
    }
    body = _canonical(manifest)
    sig = base64.b64encode(dealer.sign(body)) + b"\n"
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        tmp.chmod(0o700)
        for rel, f in all_files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, f.mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(f.data)
            os.chmod(target, f.mode)
        (tmp / MANIFEST).write_bytes(body)
        (tmp / SIGNATURE).write_bytes(sig)
        if root.exists():
            old = root.with_name(f".{root.name}.old-{os.getpid()}")
            root.rename(old)
            tmp.rename(root)
            shutil.rmtree(old)
        else:
            tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _fail(root: Path, what: str) -> CryptoError:
    return CryptoError(
        f"bundle {root}: {what}; the bundle was modified or corrupted after the dealer signed it. "
        "Do not use it: ask the key dealer for a fresh bundle (`fedpriv keys add-node` or "
        "`fedpriv keys init`)"
    )


def verify_bundle(root: Path, *, kind: str | None = None) -> VerifiedBundle:
    """Verify a bundle's signature and every file digest.

    Parameters
    ----------
    root : Path
        The bundle folder.
    kind : str, optional
        Expected ``kind`` (``server`` or ``client``).

    Returns
    -------
    VerifiedBundle

    Raises
    ------
    CryptoError
        Missing manifest or signature, a bad signature, a file that is missing, changed or not
        listed, or a bundle of the wrong kind.
    """
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise CryptoError(
            f"bundle {root}: not a folder (give the folder `fedpriv keys init` wrote)"
        )
    try:
        body = (root / MANIFEST).read_bytes()
        sig_text = (root / SIGNATURE).read_bytes()
        pub = load_dealer_public((root / DEALER_PUB).read_bytes())
    except FileNotFoundError as exc:
        raise CryptoError(
            f"bundle {root}: {Path(exc.filename).name} is missing; this is not a complete "
            "fedpriv bundle"
        ) from None
    try:
        sig = base64.b64decode(sig_text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise _fail(root, "manifest.sig is not valid base64") from None
    if not verify_dealer_signature(pub, sig, body):
        raise _fail(root, "the manifest signature does not verify")
    try:
        meta = json.loads(body)
    except ValueError:
        raise _fail(root, "manifest.json is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise CryptoError(f"bundle {root}: unsupported bundle format {meta.get('format')!r}")
    files = meta.get("files")
    if not isinstance(files, dict):
        raise _fail(root, "manifest has no file list")
    fp = dealer_fingerprint(pub)
    if meta.get("dealer") != fp:
        raise _fail(root, "the manifest names another dealer key than dealer.pub")
    for rel, digest in files.items():
        try:
            _check_rel(rel)
        except ValueError:
            raise _fail(root, f"manifest lists an invalid path {rel!r}") from None
        p = root / rel
        if not p.is_file() or p.is_symlink():
            raise _fail(root, f"{rel} is missing")
        if p.stat().st_size > _MAX_FILE_BYTES:
            raise _fail(root, f"{rel} is larger than any bundle file")
        if _sha256(p.read_bytes()) != digest:
            raise _fail(root, f"{rel} does not match its signed digest")
    for p in root.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(root).as_posix()
        if rel not in files and rel not in (MANIFEST, SIGNATURE):
            raise _fail(root, f"{rel} is not listed in the signed manifest")
    if kind is not None and meta.get("kind") != kind:
        raise CryptoError(
            f"bundle {root} is a {meta.get('kind')!r} bundle, but a {kind!r} bundle is needed here"
        )
    return VerifiedBundle(root, meta, fp)


def check_pin(bundle: VerifiedBundle, state_dir: Path, expected: str | None = None) -> str:
    """Check the bundle's dealer key against the expected or pinned fingerprint.

    On first use (no pin in ``state_dir`` and no ``expected``) the fingerprint is pinned, so a
    later bundle signed by another dealer is refused.

    Parameters
    ----------
    bundle : VerifiedBundle
    state_dir : Path
        Owner-only folder holding ``dealer.fingerprint``.
    expected : str, optional
        Fingerprint obtained out of band (``fedpriv keys init`` prints it).

    Returns
    -------
    str
        ``"expected"``, ``"pinned"`` (matched an earlier pin) or ``"new-pin"``.

    Raises
    ------
    CryptoError
        The fingerprint differs from the expected or pinned one.
    """
    from fedpriv.fileio import atomic_write_text

    fp = bundle.dealer_fingerprint
    if expected is not None and expected.strip() != fp:
        raise CryptoError(
            f"bundle {bundle.root} is signed by dealer key {fp}, not the expected "
            f"{expected.strip()}; refuse it and ask the dealer for the right bundle"
        )
    pin = state_dir / PIN_FILE
    if pin.exists():
        pinned = pin.read_text(encoding="utf-8").strip()
        if pinned != fp:
            raise CryptoError(
                f"bundle {bundle.root} is signed by dealer key {fp}, but this device was set up "
                f"with dealer key {pinned} ({pin}); if the federation was really re-keyed, "
                f"delete {pin} and start again"
            )
        return "expected" if expected else "pinned"
    atomic_write_text(pin, fp + "\n", mode=0o600)
    return "expected" if expected else "new-pin"
