"""Key material of a run: where a key holder's secret is, loading it, and where the server's
public parameters are.

Three layouts hold keys:

* a ``fedpriv keys``/simulation dealer folder: ``server/params.json`` (+ ``identities.json``),
  ``client/params.json`` + ``client/secret.key`` (a run folder's ``keys/`` has this layout);
* a verified deployment bundle (``manifest.json``): the server bundle holds ``params.json`` at
  its root, a client bundle ``params.json`` + ``secret.key``;
* the dealer folder of a federation (``he_secret.key`` next to ``params.json``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fedpriv.errors import CryptoError

if TYPE_CHECKING:
    from fedpriv.crypto.codec import ClientCodec

__all__ = ["key_dir_for", "load_codec", "server_params_path"]


def key_dir_for(
    *, bundle: Path | None = None, state_dir: Path | None = None, keys_dir: Path | None = None
) -> Path:
    """Find a folder with ``params.json`` + the HE secret or, under threshold custody, the
    federation's mask key (key holder material).

    Order: ``keys_dir``; the verified client bundle (if it holds the secret); the device state
    folder's ``keys/`` (sealed delivery).

    Raises
    ------
    CryptoError
        None of them holds a secret.
    """
    if keys_dir is not None:
        return Path(keys_dir)
    # Threshold custody: the mask key finishes the combined decryptions the run folder holds.
    if bundle is not None:
        from fedpriv.deploy.bundle import verify_bundle

        b = verify_bundle(bundle, kind="client")
        if b.has("secret.key") or b.has("mask.key"):
            return b.root
    if state_dir is not None:
        keys = Path(state_dir) / "keys"
        if (keys / "secret.key").exists() or (keys / "mask.key").exists():
            return keys
    raise CryptoError(
        "no HE secret found: give --bundle with a client bundle that holds secret.key (or, "
        "threshold custody, mask.key), or --state-dir of a device that received its sealed "
        "key, or --keys-dir (threshold custody: the dealer folder works too)"
    )


def load_codec(key_dir: Path) -> ClientCodec:
    """The key holder's codec from a key folder (client keys, a bundle, or the dealer folder)."""
    from fedpriv.crypto.codec import ClientCodec

    key_dir = Path(key_dir)
    if (key_dir / "client" / "params.json").exists():  # a dealer output folder (keys/)
        key_dir = key_dir / "client"
    if (key_dir / "he_secret.key").exists() and not (key_dir / "secret.key").exists():
        from fedpriv.crypto import KeyHolder
        from fedpriv.crypto.codec import load_params_file

        params = load_params_file(key_dir / "params.json")
        return ClientCodec(params, KeyHolder.load(key_dir / "he_secret.key"))
    if not (key_dir / "params.json").exists():
        raise CryptoError(f"{key_dir}: no params.json (not a key folder)")
    return ClientCodec.load(key_dir)


def server_params_path(keys_dir: Path) -> Path:
    """The public parameters the server aggregates with, from a dealer folder or a server
    bundle (verified here).

    Raises
    ------
    CryptoError
        Not a key folder, or a bundle that fails verification.
    """
    keys_dir = Path(keys_dir)
    if (keys_dir / "manifest.json").exists():
        from fedpriv.deploy.bundle import verify_bundle

        return verify_bundle(keys_dir, kind="server").path("params.json")
    path = keys_dir / "server" / "params.json"
    if not path.exists():
        raise CryptoError(
            f"{keys_dir}: neither a server bundle nor a `fedpriv keys` folder (no server/params.json)"
        )
    return path
