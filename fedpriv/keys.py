"""The key dealer for simulations and single-owner setups.

Run by the data owners, never by the server operator: it creates the HE secret (kept in the
client key folder only; under threshold custody Shamir shares of it, the secret itself erased)
and the public parameters the server aggregates with.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from fedpriv.config import RunConfig
from fedpriv.crypto.codec import PublicParams
from fedpriv.crypto.params import MIN_QUANT_SCALE
from fedpriv.crypto.plain import PlainParams
from fedpriv.fileio import atomic_write_text

__all__ = ["deal_keys", "max_clients_per_round"]


def max_clients_per_round(cfg: RunConfig) -> int:
    return cfg.clients_per_round


def deal_keys(cfg: RunConfig, *, num_values: int, max_weight: int, out: Path) -> PublicParams:
    """Write ``out/server/`` (public material only) and ``out/client/`` (the clients' keys).

    Shared custody: ``client/secret.key``, the one HE secret every client holds. Threshold
    custody (``encryption.key_custody = "threshold"``): one Shamir share per client id under
    ``client/shares/``, the collective public key, the share index map and the mask key; the
    server folder gets the parameters, the public key and the index map (see
    :mod:`fedpriv.crypto.tcustody`).
    """
    params: PublicParams
    holder = None
    client_ids = [f"client-{i}" for i in range(cfg.federation.num_clients)]
    if cfg.encryption.scheme == "off":
        params = PlainParams(num_values, max_clients_per_round(cfg))
    else:
        e = cfg.encryption
        value_range = e.value_range
        min_scale = MIN_QUANT_SCALE
        if cfg.client_dp:
            from fedpriv.privacy.client_level import client_level_plan

            # Uniform weights (each client's clipped update counts once) and room for the noise.
            # The rounding term of the sensitivity is not known before the scale is: budget it
            # at the clip norm (clients refuse parameters whose rounding would exceed that).
            max_weight = 1
            value_range += client_level_plan(cfg, cfg.privacy.client_clip_norm).headroom
            # ... and a scale whose rounding stays within the clip norm (sqrt(n)/s <= C).
            min_scale = max(
                min_scale, math.ceil(math.sqrt(num_values) / cfg.privacy.client_clip_norm)
            )
        elif cfg.distributed_dp:
            from fedpriv.privacy.distributed import MIN_SCALE_PER_ROOT, headroom

            # Clipped gradient sums in units of C, each client counted once, room for the noise,
            # and a scale fine enough that rounding adds at most 1% to the sensitivity.
            max_weight = 1
            value_range += headroom(cfg)
            min_scale = max(min_scale, math.ceil(MIN_SCALE_PER_ROOT * math.sqrt(num_values)))
        if e.key_custody == "threshold":
            from fedpriv.crypto.tcustody import deal_threshold_keys

            tparams = deal_threshold_keys(
                cfg,
                num_values=num_values,
                max_weight=max_weight,
                value_range=value_range,
                out=out,
                client_ids=client_ids,
                min_quant_scale=min_scale,
            )
            deal_identities(client_ids, out, client_copy=True)
            return tparams
        from fedpriv.crypto import KeyHolder, choose_params

        he = choose_params(
            e.scheme,
            num_values=num_values,
            max_clients=max_clients_per_round(cfg),
            max_weight=max_weight,
            value_range=value_range,
            poly_modulus_degree=e.poly_modulus_degree,
            coeff_modulus_bits=e.coeff_modulus_bits,
            scale_bits=e.ckks_scale_bits,
            min_quant_scale=min_scale,
        )
        holder = KeyHolder.generate(he)
        params = he
    text = json.dumps(params.to_dict(), sort_keys=True, indent=2)
    atomic_write_text(out / "server" / "params.json", text, mode=0o644)
    atomic_write_text(out / "client" / "params.json", text, mode=0o644)
    if holder is not None:
        (out / "client").chmod(0o700)
        holder.save(out / "client" / "secret.key")
    deal_identities(client_ids, out)
    return params


def deal_identities(client_ids: list[str], out: Path, *, client_copy: bool = False) -> None:
    """One Ed25519 identity key per client (``client/identities/<id>.pem``, owner-only) and the
    server's registry of their public keys (``server/identities.json``; with ``client_copy``
    also ``client/identities.json``: threshold-custody clients check signed records with it)."""
    from fedpriv.crypto.identity import generate_identity, private_pem, public_openssh

    registry: dict[str, str] = {}
    for cid in client_ids:
        key = generate_identity()
        path = out / "client" / "identities" / f"{cid}.pem"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        atomic_write_text(path, private_pem(key).decode())
        registry[cid] = public_openssh(key)
    text = json.dumps(registry, indent=2, sort_keys=True)
    atomic_write_text(out / "server" / "identities.json", text, mode=0o644)
    if client_copy:
        atomic_write_text(out / "client" / "identities.json", text, mode=0o644)
