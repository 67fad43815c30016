"""Homomorphic aggregation of pre-weighted model updates.

Client k encrypts ``[w_k * clip(x_k, -R, R), w_k, 1]``; the server sums the ciphertexts without
any key; a client decrypts ``(sum w_k x_k, sum w_k, K)`` and divides for the weighted FedAvg mean.

* ``bfv`` (default): quantized integers, exact sums, seeded symmetric ciphertexts (~1.04x the
  float32 bytes per upload with a 32-bit modulus). The product ``w_k * x_k`` is quantized with a
  public scale chosen so the sum of ``max_clients`` updates cannot wrap.
* ``ckks``: approximate float sums through TenSEAL (about 20x the float32 bytes by default).

Threat model: all clients share one secret key and the server holds none, so the server alone
learns only sizes and counts. A server colluding with any client can decrypt every update, a
client holding the key can submit any well-formed ciphertext (no range proofs), and the blobs
carry no authentication: authenticate senders at the transport (TLS + SuperNode auth).
"""

from fedpriv.crypto.core import (
    KEY_FILE_NAME,
    Aggregator,
    DecryptedAggregate,
    EncryptedUpdate,
    KeyHolder,
    server_context_bytes,
)
from fedpriv.crypto.params import HEParams, choose_params
from fedpriv.crypto.wire import KIND_AGGREGATE, KIND_UPDATE

__all__ = [
    "KEY_FILE_NAME",
    "KIND_AGGREGATE",
    "KIND_UPDATE",
    "Aggregator",
    "DecryptedAggregate",
    "EncryptedUpdate",
    "HEParams",
    "KeyHolder",
    "choose_params",
    "server_context_bytes",
]
