"""Threshold custody in a federation: key folders, the mask key, the decryption budget.

:mod:`fedpriv.crypto.threshold` is the cryptography; this module is what the protocol layer
keeps on disk and derives from it.

Key folder layout (written by :func:`deal_threshold_keys` in simulation, by the deployment
dealer's bundles otherwise)::

    params.json         ThresholdParams (public)
    public_key.bin      the collective public key (public: encrypting needs nothing else)
    parties.json        client id -> share index (public)
    identities.json     clients only: client id -> identity public key, to check the signed
                        update records a decryption request carries
    he_share.fpkey      deployment: this device's Shamir share (owner-only)
    shares/<id>.fpkey   simulation: every virtual client's share in the clients' one folder
    mask.key            clients only: the federation mask key (owner-only)

The server's folder holds ``params.json``, ``public_key.bin``, ``parties.json`` and the
identity registry: no share, no mask key. Every partial decryption is masked with a pad derived
from the mask key, so what the server relays and combines is uniformly random to it, and only a
client (any holder of the mask key) finishes the decryption of the aggregate.
"""

from __future__ import annotations

import json
import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fedpriv.errors import CryptoError, StateError, WireError
from fedpriv.fileio import atomic_write_bytes, atomic_write_text, read_owner_only

if TYPE_CHECKING:
    from fedpriv.config import RunConfig
    from fedpriv.crypto.core import DecryptedAggregate, EncryptedUpdate
    from fedpriv.crypto.threshold import KeyShare
    from fedpriv.crypto.tparams import ThresholdParams
    from fedpriv.privacy.rng import DpRandom

__all__ = [
    "MASK_KEY_FILE",
    "PARTIES_FILE",
    "PUBLIC_KEY_FILE",
    "DecryptionCounter",
    "ThresholdKeyHolder",
    "ThresholdPublic",
    "deal_threshold_keys",
    "load_mask_key",
    "load_share",
    "mask_context",
    "masks_for",
    "pack_node_keys",
    "unpack_node_keys",
    "write_mask_key",
]

PUBLIC_KEY_FILE = "public_key.bin"
PARTIES_FILE = "parties.json"
MASK_KEY_FILE = "mask.key"
SHARES_DIR = "shares"
_MASK_KEY_BYTES = 32
_MASK_DOMAIN = b"fedpriv threshold mask context v1\x00"
_NODE_KEYS_MAGIC = b"FPTHNODE\x01"
_U32 = struct.Struct(">I")
_CID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


# --------------------------------------------------------------------------- public material
@dataclass(frozen=True)
class ThresholdPublic:
    """Everything public about a dealt threshold key: parameters, public key, share indices."""

    params: ThresholdParams
    public_key: bytes
    key_id: bytes
    parties: Mapping[str, int]
    """client id -> share index (1..n); clients without a share are absent."""

    def index_of(self, client_id: str) -> int | None:
        return self.parties.get(client_id)

    @classmethod
    def load(cls, folder: Path, params: ThresholdParams | None = None) -> ThresholdPublic:
        """Read ``params.json`` (unless given), ``public_key.bin`` and ``parties.json``."""
        from fedpriv.crypto.codec import load_params_file
        from fedpriv.crypto.threshold import _load_public_key
        from fedpriv.crypto.tparams import ThresholdParams

        folder = Path(folder)
        if params is None:
            loaded = load_params_file(folder / "params.json")
            if not isinstance(loaded, ThresholdParams):
                raise CryptoError(f"{folder}: the keys are not for threshold custody")
            params = loaded
        try:
            pk = (folder / PUBLIC_KEY_FILE).read_bytes()
            raw = json.loads((folder / PARTIES_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise CryptoError(
                f"{folder}: {Path(str(exc.filename)).name} missing (threshold custody needs the "
                "public key and the share index map the dealer wrote)"
            ) from None
        except (OSError, ValueError) as exc:
            raise CryptoError(f"{folder}: cannot read threshold public material ({exc})") from None
        try:
            kid, _ = _load_public_key(params, pk)
        except WireError as exc:
            raise CryptoError(f"{folder / PUBLIC_KEY_FILE}: {exc}") from None
        return cls(params, pk, kid, _check_parties(raw, params, str(folder / PARTIES_FILE)))

    def save(self, folder: Path) -> None:
        """Write the three public files (world-readable: nothing here is secret)."""
        folder = Path(folder)
        atomic_write_text(folder / "params.json", self.params.to_json(), mode=0o644)
        atomic_write_bytes(folder / PUBLIC_KEY_FILE, self.public_key, mode=0o644)
        atomic_write_text(
            folder / PARTIES_FILE, json.dumps(dict(self.parties), indent=2, sort_keys=True), 0o644
        )


def _check_parties(raw: Any, params: ThresholdParams, source: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise CryptoError(f"{source}: must map client ids to share indices")
    out: dict[str, int] = {}
    for cid, idx in raw.items():
        if not isinstance(cid, str) or not _CID.match(cid):
            raise CryptoError(f"{source}: {cid!r} is not a client id")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 1 <= idx <= params.parties:
            raise CryptoError(f"{source}: index of {cid!r} must be in 1..{params.parties}")
        out[cid] = idx
    if len(set(out.values())) != len(out):
        raise CryptoError(f"{source}: two clients share one index")
    if len(out) < params.threshold:
        raise CryptoError(
            f"{source}: {len(out)} share holders cannot reach the threshold {params.threshold}"
        )
    return out


# --------------------------------------------------------------------------- mask key
def write_mask_key(path: Path, key: bytes) -> None:
    if len(key) != _MASK_KEY_BYTES:
        raise CryptoError("the mask key must have 32 bytes")
    atomic_write_bytes(path, key, mode=0o600)


def load_mask_key(path: Path) -> bytes:
    """The federation mask key; refused when readable by others or of the wrong size."""
    key = read_owner_only(
        path,
        "mask key",
        missing=f"{path}: mask key not found; this client cannot finish a threshold decryption",
    )
    if len(key) != _MASK_KEY_BYTES:
        raise CryptoError(f"{path}: a mask key has {_MASK_KEY_BYTES} bytes, got {len(key)}")
    return key


def mask_context(aggregate_digest: bytes, participants: Sequence[int]) -> bytes:
    """What a mask is derived for: the aggregate *and* the participant set P.

    Binding P matters: two masked partials of one party for the same aggregate but different
    P would otherwise share a pad, and their difference, (l_P - l_P') s_i C1 plus noise, would
    be an unmasked (scaled) partial decryption in the server's hands.
    """
    ps = b"".join(struct.pack(">H", int(i)) for i in sorted(participants))
    return sha256(_MASK_DOMAIN + bytes(aggregate_digest) + ps).digest()


def masks_for(
    params: ThresholdParams, mask_key: bytes, aggregate_digest: bytes, participants: Sequence[int]
) -> dict[int, np.ndarray]:
    """Every member of P's mask (what the finishing party removes)."""
    from fedpriv.crypto.threshold import derive_mask

    ctx = mask_context(aggregate_digest, participants)
    return {int(i): derive_mask(params, mask_key, ctx, int(i)) for i in participants}


# --------------------------------------------------------------------------- shares
def load_share(key_dir: Path, client_id: str, pub: ThresholdPublic) -> KeyShare:
    """This client's share: ``he_share.fpkey`` (a device's folder) or ``shares/<id>.fpkey``.

    Raises
    ------
    CryptoError
        No share for this client, a share of another key, or at another index than the
        dealer's map says.
    """
    from fedpriv.crypto.threshold import SHARE_FILE_NAME, KeyShare

    own = Path(key_dir) / SHARE_FILE_NAME
    path = own if own.exists() else Path(key_dir) / SHARES_DIR / f"{client_id}.fpkey"
    if not path.exists():
        raise CryptoError(f"{client_id}: no key share in {key_dir} (not a share holder)")
    share = KeyShare.load(path, pub.params)
    if share.key_id != pub.key_id:
        raise CryptoError(f"{path}: the share belongs to another key")
    want = pub.index_of(client_id)
    if want is not None and share.index != want:
        raise CryptoError(f"{path}: share index {share.index}, the dealer gave {client_id} {want}")
    return share


def pack_node_keys(share: bytes, mask_key: bytes) -> bytes:
    """One node's secrets as one blob (what the dealer seals to the node's key)."""
    return b"".join(
        [_NODE_KEYS_MAGIC, _U32.pack(len(share)), share, _U32.pack(len(mask_key)), mask_key]
    )


def unpack_node_keys(data: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`pack_node_keys`: (share file bytes, mask key)."""
    m = len(_NODE_KEYS_MAGIC)
    try:
        if not data.startswith(_NODE_KEYS_MAGIC):
            raise ValueError
        (ns,) = _U32.unpack_from(data, m)
        share = data[m + 4 : m + 4 + ns]
        (nk,) = _U32.unpack_from(data, m + 4 + ns)
        key = data[m + 8 + ns :]
        if len(share) != ns or len(key) != nk or nk != _MASK_KEY_BYTES:
            raise ValueError
    except (ValueError, struct.error):
        raise CryptoError("sealed threshold keys: malformed blob") from None
    return share, key


# --------------------------------------------------------------------------- the client codec
class ThresholdKeyHolder:
    """A client's side of threshold custody, with :class:`~fedpriv.crypto.core.KeyHolder`'s API.

    ``encrypt`` uses the collective public key; ``decrypt`` takes a *combined* blob (the T
    masked partial decryptions the server summed) and finishes it with the mask key. It
    cannot decrypt an update or an aggregate on its own: that needs T shares.
    """

    def __init__(self, pub: ThresholdPublic, mask_key: bytes | None) -> None:
        self.pub = pub
        self._mask_key = mask_key

    @property
    def params(self) -> ThresholdParams:
        return self.pub.params

    def __reduce__(self) -> NoReturn:
        raise TypeError("ThresholdKeyHolder cannot be pickled")

    @classmethod
    def load(cls, key_dir: Path, params: ThresholdParams) -> ThresholdKeyHolder:
        key_dir = Path(key_dir)
        pub = ThresholdPublic.load(key_dir, params)
        mk = key_dir / MASK_KEY_FILE
        return cls(pub, load_mask_key(mk) if mk.exists() else None)

    @property
    def mask_key(self) -> bytes:
        if self._mask_key is None:
            raise CryptoError("no mask key: this party cannot mask or finish decryptions")
        return self._mask_key

    @cached_property
    def _encryptor(self) -> Any:
        from fedpriv.crypto.threshold import ThresholdEncryptor

        return ThresholdEncryptor(self.params, self.pub.public_key)

    def encrypt(
        self,
        values: np.ndarray,
        weight: int,
        int_noise: np.ndarray | None = None,
        rng: DpRandom | None = None,
    ) -> EncryptedUpdate:
        result: EncryptedUpdate = self._encryptor.encrypt(values, weight, int_noise, rng)
        return result

    def decrypt(self, combined: bytes) -> DecryptedAggregate:
        """Finish a combined (masked) decryption: the aggregate's exact integer sum.

        Raises
        ------
        WireError
            Not a combined blob of this key and parameters.
        CryptoError
            Unmasked (a server that saw it would have learned the aggregate), or it fails the
            sanity checks (a wrong partial decryption).
        """
        from fedpriv.crypto.threshold import combined_info, finish_decryption

        p = self.params
        info = combined_info(p, combined, self.pub.key_id)
        if not info.masked:
            raise CryptoError(
                "the combined decryption is not masked: the server could read the aggregate"
            )
        masks = masks_for(p, self.mask_key, info.aggregate_digest, info.participants)
        return finish_decryption(p, combined, self.pub.key_id, masks)


# --------------------------------------------------------------------------- decryption budget
class DecryptionCounter:
    """Partial decryptions this device made per key id: it refuses more than D.

    Every partial reveals one more flooded value of the share (docs/crypto.md: the flooding
    covers D decryptions per dealt key). Persisted (atomically, before the partial leaves) in
    ``decryptions.json`` of the device's state folder; a corrupt file stops the device instead
    of resetting the count.
    """

    FILE = "decryptions.json"

    def __init__(self, path: Path | None, counts: dict[str, int] | None = None) -> None:
        self.path = path
        self.counts = dict(counts or {})

    @classmethod
    def load(cls, state_dir: Path | None, fallback: str = "") -> DecryptionCounter:
        """From ``state_dir/decryptions.json``, else from ``fallback`` JSON (node state)."""
        path = None if state_dir is None else Path(state_dir) / cls.FILE
        text = fallback
        if path is not None and path.exists():
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise StateError(f"{path}: cannot read ({exc})") from None
        if not text:
            return cls(path)
        try:
            raw = json.loads(text)
        except ValueError:
            raise StateError(f"{path or 'node state'}: decryption counter is not JSON") from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in raw.items()
        ):
            raise StateError(f"{path or 'node state'}: decryption counter is corrupt")
        return cls(path, raw)

    def used(self, key_id: bytes) -> int:
        return self.counts.get(key_id.hex(), 0)

    def charge(self, key_id: bytes) -> int:
        """Count one more partial decryption and persist it; returns the new count."""
        self.counts[key_id.hex()] = self.used(key_id) + 1
        if self.path is not None:
            atomic_write_text(self.path, self.to_json())
        return self.counts[key_id.hex()]

    def to_json(self) -> str:
        return json.dumps(self.counts, sort_keys=True)


# --------------------------------------------------------------------------- dealing
def deal_threshold_keys(
    cfg: RunConfig,
    *,
    num_values: int,
    max_weight: int,
    value_range: float,
    out: Path,
    client_ids: Sequence[str],
    min_quant_scale: int = 0,
) -> ThresholdParams:
    """Deal a threshold key for ``client_ids`` (share index i+1 for the i-th) into ``out``.

    ``min_quant_scale`` raises the quantization scale above the threshold default (client-level
    DP: a scale whose rounding stays within the clip norm).

    Writes ``out/server`` (public material only) and ``out/client`` (public material, every
    client's share under ``shares/``, the mask key). Nothing ever holds the whole secret: the
    dealer reads it from SEAL's memory, Shamir-shares it and erases it (:func:`deal`).
    """
    from fedpriv.config import threshold_for
    from fedpriv.crypto.threshold import deal
    from fedpriv.crypto.tparams import DEFAULT_MIN_QUANT_SCALE, choose_threshold_params

    e = cfg.encryption
    params = choose_threshold_params(
        num_values,
        cfg.clients_per_round,
        max_weight,
        value_range,
        len(client_ids),
        threshold_for(cfg),
        statistical_security=e.statistical_security,
        max_decryptions=e.max_decryptions,
        min_quant_scale=max(DEFAULT_MIN_QUANT_SCALE, min_quant_scale),
        poly_modulus_degree=e.poly_modulus_degree,
    )
    dealt = deal(params)
    parties = {cid: i + 1 for i, cid in enumerate(client_ids)}
    pub = ThresholdPublic(params, dealt.public_key, dealt.key_id, parties)
    pub.save(out / "server")
    client = out / "client"
    client.mkdir(parents=True, exist_ok=True)
    client.chmod(0o700)
    pub.save(client)
    shares = client / SHARES_DIR
    shares.mkdir(exist_ok=True)
    shares.chmod(0o700)
    by_index = {s.index: s for s in dealt.shares}
    for cid, idx in parties.items():
        by_index[idx].save(shares / f"{cid}.fpkey")
        by_index[idx].wipe()
    write_mask_key(client / MASK_KEY_FILE, os.urandom(_MASK_KEY_BYTES))
    return params
