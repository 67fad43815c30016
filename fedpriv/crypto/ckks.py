"""CKKS through TenSEAL's high-level API: approximate sums of pre-weighted float vectors.

Each ciphertext entry on the wire is one TenSEAL-serialized ``CKKSVector`` of at most N/2 values
(one SEAL ciphertext). Keeping vectors single-chunk gives every entry a tight size bound and
avoids TenSEAL's multi-chunk warning printed on stdout.

Security note (SEAL's own warning): CKKS decryption results carry the encryption noise, and
sharing them with a party that holds the ciphertexts enables key recovery (Li and Micciancio,
EUROCRYPT 2021). The decrypted aggregate must therefore never be sent back to the server in
raw form; BFV, whose decryption is exact, has no such leak.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tenseal as ts
import tenseal.sealapi as seal

from fedpriv.crypto._scratch import save_to_bytes
from fedpriv.crypto.params import HEParams
from fedpriv.errors import CryptoError, WireError

__all__ = ["CkksPublic", "CkksSecret", "seal_params_error"]


def seal_params_error(params: HEParams) -> str:
    """SEAL's reason to refuse these CKKS parameters at 128-bit security, or ``""``."""
    try:
        parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
        parms.set_poly_modulus_degree(params.poly_modulus_degree)
        parms.set_coeff_modulus(
            seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_modulus_bits))
        )
        ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    except (RuntimeError, ValueError) as e:
        return str(e)
    return "" if ctx.parameters_set() else str(ctx.parameters_error_message())


def _new_context(params: HEParams) -> Any:
    try:
        ctx = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_modulus_bits),
            encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
        )
    except ValueError as e:
        raise CryptoError(f"TenSEAL refuses the CKKS parameters: {e}") from None
    ctx.global_scale = 2.0**params.scale_bits
    return ctx


def _strip_keys(ctx: Any) -> bytes:
    return bytes(
        ctx.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )
    )


class CkksPublic:
    """What the server holds: a TenSEAL context with parameters only (no key of any kind)."""

    def __init__(self, params: HEParams) -> None:
        if params.scheme != "ckks":
            raise CryptoError(f"CkksPublic needs ckks parameters, got {params.scheme}")
        reason = seal_params_error(params)
        if reason:
            raise CryptoError(f"SEAL refuses the CKKS parameters: {reason}")
        self.params = params
        # TenSEAL always generates keys; this throwaway key is never used and is stripped here.
        self._bytes = _strip_keys(_new_context(params))
        self.context = ts.context_from(self._bytes)
        self.context.global_scale = 2.0**params.scale_bits
        if self.context.has_secret_key() or self.context.is_private():
            raise CryptoError("internal error: server context kept a secret key")
        seal_ctx = self.context.seal_context().data
        self._seal_ctx = seal_ctx
        self._parms_id = seal_ctx.first_parms_id()
        self._chunks = params.chunk_lengths()

    def context_bytes(self) -> bytes:
        return self._bytes

    def load(self, entry: bytes, kind: int, index: int) -> Any:
        """Decode one CKKS vector and check it against the parameters; raise WireError if not."""
        try:
            vec = ts.ckks_vector_from(self.context, entry)
            size = vec.size()
            cts = vec.ciphertext()
        except Exception as e:  # protobuf / SEAL errors come as several exception types
            raise WireError(f"ciphertext {index}: TenSEAL rejected it ({e})") from None
        if size != self._chunks[index]:
            raise WireError(
                f"ciphertext {index}: vector of {size} values, expected {self._chunks[index]}"
            )
        if len(cts) != 1:
            raise WireError(f"ciphertext {index}: {len(cts)} SEAL ciphertexts, expected 1")
        ct = cts[0]
        if not (
            seal.is_valid_for(ct, self._seal_ctx) and seal.is_metadata_valid_for(ct, self._seal_ctx)
        ):
            raise WireError(f"ciphertext {index}: not valid for the parameters")
        if ct.size() != 2:
            raise WireError(f"ciphertext {index}: has {ct.size()} polynomials, expected 2")
        if ct.parms_id() != self._parms_id:
            raise WireError(f"ciphertext {index}: not at the top level of the parameters")
        if ct.scale != 2.0**self.params.scale_bits:
            raise WireError(
                f"ciphertext {index}: scale {ct.scale}, expected 2^{self.params.scale_bits}"
            )
        if not ct.is_ntt_form() or ct.is_transparent():
            raise WireError(f"ciphertext {index}: malformed CKKS ciphertext")
        return vec

    def add_inplace(self, acc: Any, vec: Any) -> None:
        acc.add_(vec)

    def dump(self, vec: Any) -> bytes:
        return bytes(vec.serialize())


class CkksSecret:
    """The client side: a TenSEAL context with the secret key (no public, relin or Galois keys)."""

    def __init__(self, params: HEParams, secret_context: bytes | None = None) -> None:
        self.public = CkksPublic(params)
        self.params = params
        if secret_context is None:
            self._ctx = _new_context(params)
        else:
            try:
                self._ctx = ts.context_from(secret_context)
            except Exception as e:
                raise CryptoError(f"CKKS secret context does not load ({e})") from None
            self._ctx.global_scale = 2.0**params.scale_bits
        if not self._ctx.has_secret_key():
            raise CryptoError("CKKS context holds no secret key")
        # parms_id hashes every encryption parameter: equal ids mean the same parameters.
        if self._ctx.seal_context().data.first_parms_id() != self.public._parms_id:
            raise CryptoError("CKKS secret context does not match the parameters")
        self._sk = self._ctx.secret_key()

    def secret_context_bytes(self) -> bytes:
        return bytes(
            self._ctx.serialize(
                save_public_key=False,
                save_secret_key=True,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )

    def secret_key_bytes(self) -> bytes:
        """The raw serialized SEAL secret key (not the context around it)."""
        return save_to_bytes(self._sk.data)

    def encrypt(self, slots: np.ndarray) -> list[bytes]:
        out: list[bytes] = []
        start = 0
        for n in self.params.chunk_lengths():
            vec = ts.ckks_vector(self._ctx, slots[start : start + n].tolist())
            out.append(bytes(vec.serialize()))
            start += n
        return out

    def decrypt(self, vecs: list[Any]) -> np.ndarray:
        return np.concatenate([np.asarray(v.decrypt(self._sk), dtype=np.float64) for v in vecs])
