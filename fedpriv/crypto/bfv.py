"""BFV through ``tenseal.sealapi``: seeded symmetric ciphertexts of quantized integers.

A seeded symmetric ciphertext stores one polynomial plus a 64-byte seed from which the server
regenerates the other polynomial, so an upload with q <= 32 bits costs about 1.04x the float32
bytes. The server's context is built from the encryption parameters alone and holds no key.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from fedpriv.crypto._scratch import load_from_bytes, save_to_bytes
from fedpriv.crypto.params import KIND_AGGREGATE, KIND_UPDATE, HEParams
from fedpriv.errors import CryptoError, WireError

__all__ = ["BfvPublic", "BfvSecret", "batching_prime", "seal_params_error"]

# SEAL's serialization header: magic, header size, version major/minor, compression, reserved, size.
_SEAL_HEAD = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
_COMPR_ZSTD = 2


def batching_prime(n: int, bits: int) -> int:
    """Largest ``bits``-bit prime t = 1 mod 2n (what ``PlainModulus.Batching`` returns)."""
    try:
        return int(seal.PlainModulus.Batching(n, bits).value())
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"no {bits}-bit batching prime for N={n} ({e})") from None


def _encryption_parameters(n: int, bits: tuple[int, ...], t: int) -> Any:
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.BFV)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(n, list(bits)))
    parms.set_plain_modulus(seal.Modulus(t))
    return parms


def seal_params_error(n: int, bits: tuple[int, ...], t: int) -> str:
    """SEAL's reason to refuse these parameters at 128-bit security, or ``""``."""
    try:
        ctx = seal.SEALContext(_encryption_parameters(n, bits, t), True, seal.SEC_LEVEL_TYPE.TC128)
    except (RuntimeError, ValueError) as e:
        return str(e)
    if not ctx.parameters_set():
        return str(ctx.parameters_error_message())
    if not ctx.first_context_data().qualifiers().using_batching:
        return "plain modulus does not support batching"
    return ""


class BfvPublic:
    """What the server holds: parameters, evaluator, validation. No key of any kind."""

    def __init__(self, params: HEParams) -> None:
        if params.scheme != "bfv":
            raise CryptoError(f"BfvPublic needs bfv parameters, got {params.scheme}")
        self.params = params
        n, bits, t = params.poly_modulus_degree, params.coeff_modulus_bits, params.plain_modulus
        reason = seal_params_error(n, bits, t)
        if reason:
            raise CryptoError(f"SEAL refuses the BFV parameters: {reason}")
        self._parms = _encryption_parameters(n, bits, t)
        self.context = seal.SEALContext(self._parms, True, seal.SEC_LEVEL_TYPE.TC128)
        self._evaluator = seal.Evaluator(self.context)
        self._parms_id = self.context.first_parms_id()
        data = self.context.first_context_data().parms().coeff_modulus()
        self._primes = [int(m.value()) for m in data]

    def context_bytes(self) -> bytes:
        """The serialized encryption parameters: everything the server needs."""
        return save_to_bytes(self._parms)

    def load(self, entry: bytes, kind: int, index: int, version: int = 1) -> Any:
        """Decode one ciphertext of wire ``version`` (1: SEAL's zstd serialization, 2: packed,
        :mod:`fedpriv.crypto.packed`) through SEAL's own checks; raise WireError if unusable."""
        if version == 2:
            from fedpriv.crypto.packed import unpack_entry

            raw = unpack_entry(self.params, kind, entry, self._parms_id, self._primes, index)
        else:
            self._check_seal_header(entry, index)
            if kind == KIND_UPDATE and len(entry) > self.params.max_entry_bytes(kind):
                raise WireError(f"ciphertext {index}: too large for a seeded update")
            raw = entry
        ct = seal.Ciphertext()
        try:
            # SEAL's load also runs is_valid_for (coefficients reduced, sizes, parms_id known).
            load_from_bytes(ct, self.context, raw)
        except Exception as e:  # SEAL raises ValueError/RuntimeError/... on malformed data
            raise WireError(f"ciphertext {index}: SEAL rejected it ({e})") from None
        if not (
            seal.is_valid_for(ct, self.context) and seal.is_metadata_valid_for(ct, self.context)
        ):
            raise WireError(f"ciphertext {index}: not valid for the parameters")
        if ct.size() != 2:
            raise WireError(f"ciphertext {index}: has {ct.size()} polynomials, expected 2")
        if ct.parms_id() != self._parms_id:
            raise WireError(f"ciphertext {index}: not at the data level of the parameters")
        if ct.is_ntt_form():
            raise WireError(f"ciphertext {index}: BFV ciphertext in NTT form")
        if ct.is_transparent():
            # A transparent ciphertext carries its plaintext in the clear: never a real encryption.
            raise WireError(f"ciphertext {index}: transparent (not encrypted)")
        return ct

    @staticmethod
    def _check_seal_header(entry: bytes, index: int) -> None:
        if len(entry) < _SEAL_HEAD.size:
            raise WireError(f"ciphertext {index}: shorter than SEAL's header")
        magic, hsize, major, _minor, compr, reserved, size = _SEAL_HEAD.unpack_from(entry)
        if magic != _SEAL_MAGIC or hsize != _SEAL_HEAD.size or major != 4 or reserved != 0:
            raise WireError(f"ciphertext {index}: bad SEAL header")
        if compr != _COMPR_ZSTD:
            raise WireError(f"ciphertext {index}: compression mode {compr}, expected zstd")
        if size != len(entry):
            raise WireError(f"ciphertext {index}: SEAL header says {size} bytes, got {len(entry)}")

    def add_inplace(self, acc: Any, ct: Any) -> None:
        self._evaluator.add_inplace(acc, ct)

    def dump(self, ct: Any, version: int = 1) -> bytes:
        """Serialize an aggregate ciphertext for wire ``version`` (2: packed)."""
        raw = save_to_bytes(ct)
        if version == 2:
            from fedpriv.crypto.packed import pack_entry

            return pack_entry(self.params, KIND_AGGREGATE, raw)
        return raw


class BfvSecret:
    """The client side: the secret key, encryption and decryption."""

    def __init__(self, params: HEParams, secret_key: bytes | None = None) -> None:
        self.public = BfvPublic(params)
        self.params = params
        ctx = self.public.context
        if secret_key is None:
            self._sk = seal.KeyGenerator(ctx).secret_key()
        else:
            self._sk = seal.SecretKey()
            try:
                load_from_bytes(self._sk, ctx, secret_key)
            except Exception as e:
                raise CryptoError(f"secret key does not load for these parameters ({e})") from None
            if not seal.is_valid_for(self._sk, ctx):
                raise CryptoError("secret key is not valid for these parameters")
        self._encryptor = seal.Encryptor(ctx, self._sk)
        self._decryptor = seal.Decryptor(ctx, self._sk)
        self._encoder = seal.BatchEncoder(ctx)

    def secret_key_bytes(self) -> bytes:
        return save_to_bytes(self._sk)

    def encrypt(self, slots: np.ndarray, version: int = 1) -> list[bytes]:
        """Encrypt int64 slot values (|v| < t/2), N per ciphertext, as seeded ciphertexts
        serialized for wire ``version`` (1: SEAL's own form, 2: packed)."""
        n = self.params.poly_modulus_degree
        out: list[bytes] = []
        for i in range(0, len(slots), n):
            pt = seal.Plaintext()
            self._encoder.encode(slots[i : i + n].tolist(), pt)
            out.append(save_to_bytes(self._encryptor.encrypt_symmetric(pt)))
        if version == 2:
            from fedpriv.crypto.packed import pack_entry

            out = [pack_entry(self.params, KIND_UPDATE, e) for e in out]
        return out

    def decrypt(self, cts: list[Any]) -> np.ndarray:
        """Decrypt to centered int64 slots (all N slots of every ciphertext, concatenated)."""
        parts = []
        for ct in cts:
            if self._decryptor.invariant_noise_budget(ct) <= 0:
                raise CryptoError("noise budget exhausted: the aggregate cannot be decrypted")
            pt = seal.Plaintext()
            self._decryptor.decrypt(ct, pt)
            parts.append(np.asarray(self._encoder.decode_int64(pt), dtype=np.int64))
        return np.concatenate(parts)

    def noise_budget(self, ct: Any) -> int:
        return int(self._decryptor.invariant_noise_budget(ct))
