"""Homomorphic aggregation of pre-weighted model updates.

Client k encrypts ``[w_k * clip(x_k, -R, R), w_k, 1]``; the server sums the ciphertexts without
any key; a client decrypts ``(sum w_k x_k, sum w_k, K)`` and divides for the weighted FedAvg mean.

* ``bfv`` (default): quantized integers, exact sums, seeded symmetric ciphertexts (~1.04x the
  float32 bytes per upload with a 32-bit modulus). The product ``w_k * x_k`` is quantized with a
  public scale chosen so the sum of ``max_clients`` updates cannot wrap.
* ``ckks``: approximate float sums through TenSEAL (about 20x the float32 bytes by default).

Threshold custody (:mod:`fedpriv.crypto.threshold`, parameters in :mod:`fedpriv.crypto.tparams`,
derivation in docs/crypto.md): the BFV secret is Shamir-shared, clients encrypt under a
collective public key, and any T of n parties decrypt an aggregate with flooded partial
decryptions; fewer than T, even with the server, learn nothing about an individual update.

Threat model: all clients share one secret key and the server holds none, so the server alone
learns only sizes and counts. A server colluding with any client can decrypt every update, a
client holding the key can submit any well-formed ciphertext (no range proofs), and the blobs
carry no authentication: authenticate senders at the transport (TLS + SuperNode auth).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedpriv.crypto.choose import choose_params
    from fedpriv.crypto.codec import (
        ClientCodec,
        EncodedUpdate,
        PublicParams,
        load_params_file,
        open_aggregator,
        params_from_dict,
    )
    from fedpriv.crypto.core import (
        KEY_FILE_NAME,
        Aggregator,
        DecryptedAggregate,
        EncryptedUpdate,
        KeyHolder,
        server_context_bytes,
    )
    from fedpriv.crypto.params import KIND_AGGREGATE, KIND_UPDATE, HEParams
    from fedpriv.crypto.plain import PlainParams
    from fedpriv.crypto.threshold import (
        KeyShare,
        ThresholdAggregator,
        ThresholdEncryptor,
        combine_partials,
        deal,
        finish_decryption,
    )
    from fedpriv.crypto.tparams import ThresholdParams, choose_threshold_params

__all__ = [
    "KEY_FILE_NAME",
    "KIND_AGGREGATE",
    "KIND_UPDATE",
    "Aggregator",
    "ClientCodec",
    "DecryptedAggregate",
    "EncodedUpdate",
    "EncryptedUpdate",
    "HEParams",
    "KeyHolder",
    "KeyShare",
    "PlainParams",
    "PublicParams",
    "ThresholdAggregator",
    "ThresholdEncryptor",
    "ThresholdParams",
    "choose_params",
    "choose_threshold_params",
    "combine_partials",
    "deal",
    "finish_decryption",
    "load_params_file",
    "open_aggregator",
    "params_from_dict",
    "server_context_bytes",
]

# SEAL (TenSEAL) loads on first use: plaintext runs and config tools never import it.
_LAZY = {
    "KEY_FILE_NAME": "fedpriv.crypto.core",
    "Aggregator": "fedpriv.crypto.core",
    "DecryptedAggregate": "fedpriv.crypto.core",
    "EncryptedUpdate": "fedpriv.crypto.core",
    "KeyHolder": "fedpriv.crypto.core",
    "server_context_bytes": "fedpriv.crypto.core",
    "HEParams": "fedpriv.crypto.params",
    "choose_params": "fedpriv.crypto.choose",
    "KIND_AGGREGATE": "fedpriv.crypto.params",
    "KIND_UPDATE": "fedpriv.crypto.params",
    "ClientCodec": "fedpriv.crypto.codec",
    "EncodedUpdate": "fedpriv.crypto.codec",
    "PublicParams": "fedpriv.crypto.codec",
    "load_params_file": "fedpriv.crypto.codec",
    "open_aggregator": "fedpriv.crypto.codec",
    "params_from_dict": "fedpriv.crypto.codec",
    "PlainParams": "fedpriv.crypto.plain",
    "KeyShare": "fedpriv.crypto.threshold",
    "ThresholdAggregator": "fedpriv.crypto.threshold",
    "ThresholdEncryptor": "fedpriv.crypto.threshold",
    "combine_partials": "fedpriv.crypto.threshold",
    "deal": "fedpriv.crypto.threshold",
    "finish_decryption": "fedpriv.crypto.threshold",
    "ThresholdParams": "fedpriv.crypto.tparams",
    "choose_threshold_params": "fedpriv.crypto.tparams",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fedpriv.crypto' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
