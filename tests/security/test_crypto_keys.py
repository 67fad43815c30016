"""The key file: owner-only, atomic, integrity-checked, refused when tampered."""

from __future__ import annotations

import os
from hashlib import sha256
from pathlib import Path

import pytest

from fedpriv.crypto import KeyHolder, choose_params
from fedpriv.errors import CryptoError


@pytest.fixture(scope="module")
def key_bytes() -> bytes:
    return KeyHolder.generate(choose_params("bfv", 10, 3, 10, 1.0)).to_bytes()


def _reseal(body: bytes) -> bytes:
    return body[:-32] + sha256(body[:-32]).digest()


def test_saved_with_owner_only_mode_under_permissive_umask(tmp_path: Path) -> None:
    kh = KeyHolder.generate(choose_params("bfv", 10, 3, 10, 1.0))
    old = os.umask(0)
    try:
        path = kh.save(tmp_path / "k.fpkey")
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert KeyHolder.load(path).secret_key_bytes() == kh.secret_key_bytes()


def test_readable_by_others_is_refused(tmp_path: Path, key_bytes: bytes) -> None:
    path = tmp_path / "k.fpkey"
    path.write_bytes(key_bytes)
    path.chmod(0o644)
    with pytest.raises(CryptoError, match="chmod 600"):
        KeyHolder.load(path)
    path.chmod(0o600)
    KeyHolder.load(path)


def test_missing_file_is_crypto_error(tmp_path: Path) -> None:
    with pytest.raises(CryptoError, match="cannot read"):
        KeyHolder.load(tmp_path / "absent.fpkey")


@pytest.mark.parametrize("where", [0, 9, 20, 200, -100, -1])
def test_any_flipped_byte_is_detected(key_bytes: bytes, where: int) -> None:
    b = bytearray(key_bytes)
    b[where] ^= 0x40
    with pytest.raises(CryptoError):
        KeyHolder.from_bytes(bytes(b))


@pytest.mark.parametrize("cut", [0, 5, 40, 1000])
def test_truncated_is_detected(key_bytes: bytes, cut: int) -> None:
    with pytest.raises(CryptoError):
        KeyHolder.from_bytes(key_bytes[:cut])


def test_resealed_but_inconsistent_content_is_refused(key_bytes: bytes) -> None:
    # Parameters edited (digest recomputed): the JSON no longer validates.
    edited = key_bytes.replace(b'"max_clients":3', b'"max_clients":9')
    assert edited != key_bytes
    with pytest.raises(CryptoError, match="parameters"):
        KeyHolder.from_bytes(_reseal(edited))
    # A secret key made for other parameters does not load under these ones.
    other = KeyHolder.generate(choose_params("bfv", 10, 3, 10, 1.0, coeff_modulus_bits=(40,)))
    secret = other.secret_key_bytes()
    mine = KeyHolder.from_bytes(key_bytes).secret_key_bytes()
    start = key_bytes.index(mine)
    swapped = (
        key_bytes[: start - 4]
        + len(secret).to_bytes(4, "big")
        + secret
        + key_bytes[start + len(mine) :]
    )
    with pytest.raises(CryptoError, match="secret key"):
        KeyHolder.from_bytes(_reseal(swapped))
