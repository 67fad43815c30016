"""The server side holds no secret key and cannot decrypt."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as seal

from fedpriv.crypto import Aggregator, KeyHolder, choose_params, server_context_bytes
from fedpriv.crypto.wire import unpack


def _contains_secret(haystack: bytes, secret: bytes) -> bool:
    """Whole key, or any 64-byte window from it (checked at a stride), appears in ``haystack``."""
    if secret in haystack:
        return True
    # Skip SEAL's 16-byte header, shared by every serialized object.
    return any(secret[i : i + 64] in haystack for i in range(16, len(secret) - 64, 97))


def _server_objects(agg: Aggregator) -> list[Any]:
    """Every object reachable from the aggregator through instance attributes."""
    seen: dict[int, Any] = {}
    todo: list[Any] = [agg]
    while todo:
        o = todo.pop()
        if id(o) in seen:
            continue
        seen[id(o)] = o
        if hasattr(o, "__dict__"):
            todo.extend(vars(o).values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return list(seen.values())


@pytest.mark.parametrize("scheme", ["bfv", "ckks"])
def test_server_data_contains_no_secret_key(scheme: str) -> None:
    params = choose_params(scheme, 3000, max_clients=3, max_weight=10, value_range=1.0)
    kh = KeyHolder.generate(params)
    secret = kh.secret_key_bytes()
    assert len(secret) > 1000
    agg = Aggregator(params)
    update = kh.encrypt(np.zeros(3000), 5).blob
    agg.add(update)
    server_side = [
        server_context_bytes(params),
        agg.context_bytes(),
        params.to_json().encode(),
        update,
        agg.result(),
    ]
    for data in server_side:
        assert not _contains_secret(data, secret)
    # The search does find the key where it is: in the key holder's own file.
    assert _contains_secret(kh.to_bytes(), secret)
    for o in _server_objects(agg):
        assert not isinstance(o, (seal.SecretKey, seal.Decryptor, KeyHolder))


def test_bfv_server_context_cannot_decrypt() -> None:
    params = choose_params("bfv", 100, 3, 10, 1.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    agg.add(kh.encrypt(np.full(100, 0.75), 10).blob)
    server_ctx = agg._public.context
    with pytest.raises(ValueError, match="secret key"):
        seal.Decryptor(server_ctx, seal.SecretKey())
    # A key the server makes itself decrypts to noise, not to the update.
    own_key = seal.KeyGenerator(server_ctx).secret_key()
    (entry,) = unpack(agg.result(), params, frozenset({2}))[1]
    ct = agg._public.load(entry, 2, 0, agg.result()[4])  # the wire version byte
    pt = seal.Plaintext()
    seal.Decryptor(server_ctx, own_key).decrypt(ct, pt)
    slots = np.asarray(seal.BatchEncoder(server_ctx).decode_int64(pt))
    assert not (slots[100] == 10 and slots[101] == 1)
    assert kh.decrypt(agg.result()).total_weight == 10


def test_ckks_server_context_cannot_decrypt() -> None:
    params = choose_params("ckks", 100, 3, 10, 1.0)
    kh, agg = KeyHolder.generate(params), Aggregator(params)
    agg.add(kh.encrypt(np.full(100, 0.75), 10).blob)
    server_ctx = ts.context_from(server_context_bytes(params))
    assert not server_ctx.has_secret_key() and not server_ctx.is_private()
    assert not server_ctx.has_relin_keys() and not server_ctx.has_galois_keys()
    (entry,) = unpack(agg.result(), params, frozenset({2}))[1]
    vec = ts.ckks_vector_from(server_ctx, entry)
    with pytest.raises(ValueError, match="secret"):
        vec.decrypt()
    with pytest.raises(ValueError, match=r"secret|public"):
        server_ctx.secret_key()
    assert len(server_context_bytes(params)) < 1000  # parameters only
