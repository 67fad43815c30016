"""Attacks on threshold custody, end to end on Flower's simulation engine (real Ray, Opacus, SEAL).

The adversary is the server (an :class:`EncryptedFedAvg` subclass, passed with
``simulate(..., strategy_class=...)``) together with T-1 colluding clients (their key folders).
Each test performs the attack and fails if it succeeds:

* the server asks T clients to partially decrypt one client's ciphertext dressed up as an
  aggregate (count 1): every device refuses, with a signed reason, and no partial leaves;
* the server forges the count and attaches the round's real signed records: devices that
  rebuild the aggregate from the signed updates (``decryption_check = "rebuild"``) refuse;
* the server, holding every ciphertext, the aggregate, the honest member's partial of the
  aggregate and T-1 shares plus the mask key (from the colluders' key folders), tries to read
  one client's update: its best attempts are statistically uniform, while the same statistic
  flags the real plaintext;
* no file of the run holds the whole key, and no server-side file holds a share or the mask key
  (byte search).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from scipy import stats

from fedpriv.config import load_config
from fedpriv.crypto import threshold as th
from fedpriv.crypto.identity import IdentityRegistry
from fedpriv.crypto.rq import pack_bits
from fedpriv.crypto.tcustody import ThresholdPublic, load_mask_key, masks_for
from fedpriv.errors import RunFailedError
from fedpriv.privacy import read_chain
from fedpriv.privacy.ledger import DECRYPT_FORMAT, parse_record, record_digest
from fedpriv.protocol import DecryptRequest, parse_train_reply
from fedpriv.simulation import simulate
from fedpriv.strategy import EncryptedFedAvg
from tests.security.test_threshold_collusion import _slots_of, _uniformity_pvalue

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("no_leftover_processes")]

BASE = [
    "rounds=1",
    "federation.num_clients=4",
    "train.model=logreg",
    "train.local_epochs=1",
    "privacy.noise_multiplier=1.0",
    "federation.round_timeout_s=300",  # round 1 starts Ray actors: minutes on a loaded machine
    "encryption.key_custody=threshold",  # T = 3 of 4
]
VICTIM, COLLUDERS, HONEST = "client-0", ("client-1", "client-2"), "client-3"


class _Capturing(EncryptedFedAvg):
    """Keeps what a server sees: every accepted update (by client), requests and partials."""

    updates: ClassVar[dict[str, bytes]] = {}
    partials: ClassVar[dict[str, bytes]] = {}
    requests: ClassVar[list[DecryptRequest]] = []

    def aggregate_train(self, server_round: int, replies: Any) -> Any:
        replies = list(replies)
        for msg in replies:
            if not msg.has_error() and "update" in msg.content.array_records:
                r = parse_train_reply(msg, max_blob_bytes=1 << 30)
                assert r.blob is not None
                type(self).updates[r.client_id] = r.blob
        return super().aggregate_train(server_round, replies)

    def _share_holders(self, accepted: list[Any], online: set[int]) -> list[tuple[int, str]]:
        order = [*COLLUDERS, HONEST, VICTIM]
        return sorted(super()._share_holders(accepted, online), key=lambda m: order.index(m[1]))

    def aggregate_decrypt(self, server_round: int, members: Any, req: Any, replies: Any, dec: Any):  # type: ignore[no-untyped-def]
        from fedpriv.protocol import parse_decrypt_reply

        replies = list(replies)
        for msg in replies:
            if not msg.has_error():
                rep = parse_decrypt_reply(msg, max_blob_bytes=1 << 30)
                if rep.partial is not None:
                    type(self).partials[rep.client_id] = rep.partial
        type(self).requests.append(req)
        return super().aggregate_decrypt(server_round, members, req, replies, dec)


class SingleCiphertextServer(_Capturing):
    """Asks for a partial decryption of the victim's ciphertext alone (an 'aggregate' of 1)."""

    def decrypt_request(
        self, server_round: int, aggregate: bytes, participants: Any, accepted: Any
    ) -> DecryptRequest:  # type: ignore[override]
        assert self.threshold is not None
        one = th.ThresholdAggregator(self.threshold.params, self.threshold.key_id)
        one.add(self.updates[VICTIM])
        victim = [c for c in accepted if c.client_id == VICTIM]
        return super().decrypt_request(server_round, one.result(), participants, victim)


class ForgedCountServer(_Capturing):
    """Frames the victim's ciphertext as an aggregate of every update, with the real records
    (and, for devices that rebuild, the real updates)."""

    def decrypt_request(
        self, server_round: int, aggregate: bytes, participants: Any, accepted: Any
    ) -> DecryptRequest:  # type: ignore[override]
        assert self.threshold is not None
        p, kid = self.threshold.params, self.threshold.key_id
        c0c, c1 = th._load_update(p, self.updates[VICTIM], kid)
        forged = th._frame(
            p, th.KIND_AGGREGATE, kid, th._U32.pack(len(accepted)), th._pack_ciphertext(p, c0c, c1)
        )
        return super().decrypt_request(server_round, forged, participants, accepted)


def _refusals(run: Path) -> list[dict[str, Any]]:
    """The signed decrypt records of the run, each verified against the identity registry."""
    registry = IdentityRegistry.load(run / "keys" / "server" / "identities.json")
    out = []
    for e in read_chain(run / "decryption.jsonl"):
        assert e["decrypt_record"], e
        registry.verify_record(
            e["client_id"], record_digest(e["decrypt_record"]), bytes.fromhex(e["client_signature"])
        )
        out.append(parse_record(e["decrypt_record"], DECRYPT_FORMAT))
    return out


def _no_partial_left(run: Path) -> None:
    egress = read_chain(run / "egress.jsonl")
    assert not [e for e in egress if e["kind"] == "partial-decryption"]


def test_partial_decryption_of_one_clients_ciphertext_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "single"
    _Capturing.updates, _Capturing.partials, _Capturing.requests = {}, {}, []
    cfg = load_config(None, [*BASE, "name=single"])
    with pytest.raises(RunFailedError, match="decryption failed"):
        simulate(cfg, run, strategy_class=SingleCiphertextServer)
    recs = _refusals(run)
    assert len(recs) == 3 and {r["client_id"] for r in recs} == {*COLLUDERS, HONEST}
    for r in recs:
        assert r["status"] == "refused" and r["partial_sha256"] == ""
        assert "sums 1 update(s)" in r["reason"] and "one client's ciphertext" in r["reason"]
    assert not _Capturing.partials
    _no_partial_left(run)
    m = json.loads((run / "metrics.json").read_text())
    assert m["rounds"][0]["decryption"]["status"] == "failed"
    assert not (run / "globals" / "round_001.bin").exists()


def test_forged_count_is_refused_by_devices_that_rebuild_the_aggregate(tmp_path: Path) -> None:
    run = tmp_path / "forged"
    _Capturing.updates, _Capturing.partials, _Capturing.requests = {}, {}, []
    cfg = load_config(None, [*BASE, "name=forged", "encryption.decryption_check=rebuild"])
    with pytest.raises(RunFailedError, match="decryption failed"):
        simulate(cfg, run, strategy_class=ForgedCountServer)
    recs = _refusals(run)
    assert len(recs) == 3
    for r in recs:
        assert r["status"] == "refused" and r["aggregate_count"] == 4
        assert "not the sum of the round's signed updates" in r["reason"], r["reason"]
    assert _Capturing.requests and all(len(q.updates) == 4 for q in _Capturing.requests)
    assert not _Capturing.partials
    _no_partial_left(run)


# --------------------------------------------------------------------------- collusion
def _secret(pub: ThresholdPublic, shares: dict[int, th.KeyShare]) -> np.ndarray:
    """The whole key, interpolated from T shares (the test's oracle, never the attacker's)."""
    rns = th._rns(pub.params)
    ps = sorted(shares)[: pub.params.threshold]
    s = np.zeros_like(shares[ps[0]].residues())
    for i in ps:
        s = rns.add(
            s, rns.mul_scalars(shares[i].residues(), th.lagrange_at_zero(pub.params, i, ps))
        )
    return s


def _lift(params: Any, d: np.ndarray) -> np.ndarray:
    """A compressed b-bit polynomial back to R_q residues: round(q d / 2^b)."""
    q, b = params.modulus, params.compress_bits
    vals = [(int(v) * q + (1 << (b - 1))) >> b for v in d.reshape(-1)]
    cts, n = params.num_ciphertexts, params.poly_modulus_degree
    return np.stack(
        [
            np.array([[vals[c * n + i] % p for i in range(n)] for p in params.primes], np.uint64)
            for c in range(cts)
        ]
    )


def _windows(data: bytes, width: int = 48, step: int = 257) -> list[bytes]:
    return [data[i : i + width] for i in range(0, max(1, len(data) - width), step)]


def _server_files(run: Path) -> list[Path]:
    return [
        p
        for p in run.rglob("*")
        if p.is_file()
        and not p.is_relative_to(run / "keys" / "client")
        and not p.is_relative_to(run / "clients")
        and p.name != "model.safetensors"
        and not p.name.startswith("privacy_report")
    ]


def test_server_with_t_minus_1_colluders_reads_nothing(tmp_path: Path) -> None:
    run = tmp_path / "collude"
    _Capturing.updates, _Capturing.partials, _Capturing.requests = {}, {}, []
    cfg = load_config(None, [*BASE, "name=collude"])
    res = simulate(cfg, run, strategy_class=_Capturing)
    d = res.metrics["rounds"][0]["decryption"]
    assert d["status"] == "decrypted" and d["participants"] == [*COLLUDERS, HONEST]
    keys = run / "keys" / "client"
    pub = ThresholdPublic.load(keys)
    p, kid = pub.params, pub.key_id
    rns = th._rns(p)
    t = p.plain_modulus
    # What the adversary holds: the server's view, and the colluders' key folders.
    aggregate = (run / "globals" / "round_001.aggregate.bin").read_bytes()
    victim = _Capturing.updates[VICTIM]
    honest = _Capturing.partials[HONEST]
    mask_key = load_mask_key(keys / "mask.key")
    mine = {pub.parties[c]: th.KeyShare.load(keys / "shares" / f"{c}.fpkey", p) for c in COLLUDERS}
    ps = sorted(pub.parties[c] for c in [*COLLUDERS, HONEST])
    h = pub.parties[HONEST]
    # The mask key removes the honest member's pad: the adversary sees its partial in the clear.
    info = th.partial_info(p, honest, kid)
    assert info.participants == tuple(ps) and info.masked
    d_masked = th.unpack_bits(
        honest[-32 - p.partial_payload_bytes : -32], p.compress_bits, p.num_coefficients
    ).reshape(p.num_ciphertexts, p.poly_modulus_degree)
    mask = masks_for(p, mask_key, th.aggregate_digest(aggregate), ps)[h]
    mod = np.uint64((1 << p.compress_bits) - 1)
    d_h = (d_masked + (mod + np.uint64(1) - mask)) & mod
    c0c, c1 = th._load_update(p, victim, kid)
    # Attempt 1: interpolate with the T-1 shares only.
    s_part = np.zeros_like(mine[ps[0]].residues())
    for i, share in mine.items():
        s_part = rns.add(s_part, rns.mul_scalars(share.residues(), th.lagrange_at_zero(p, i, ps)))
    d1 = rns.intt(rns.mul_pointwise(rns.ntt(c1), rns.ntt(s_part)[None]))
    guesses = [_slots_of(p, c0c, d1)]
    # Attempt 2: move the honest partial of the aggregate onto the victim's ciphertext.
    _, agg_c1, _ = th._load_aggregate(p, aggregate, kid)
    agg_ntt = rns.ntt(agg_c1)
    assert np.all(agg_ntt != 0)
    inv = np.empty_like(agg_ntt)
    for j, q in enumerate(p.primes):
        inv[:, j, :] = np.array([pow(int(v), -1, q) for v in agg_ntt[:, j, :].ravel()]).reshape(
            agg_ntt[:, j, :].shape
        )
    moved = rns.intt(rns.mul_pointwise(rns.mul_pointwise(rns.ntt(_lift(p, d_h)), inv), rns.ntt(c1)))
    guesses += [_slots_of(p, c0c, rns.add(d1, moved)), _slots_of(p, c0c, moved)]
    # The oracle: the victim's real plaintext (needs T shares, which the adversary lacks).
    all_shares = {
        pub.parties[c]: th.KeyShare.load(keys / "shares" / f"{c}.fpkey", p) for c in pub.parties
    }
    s = _secret(pub, all_shares)
    truth = _slots_of(p, c0c, rns.intt(rns.mul_pointwise(rns.ntt(c1), rns.ntt(s)[None])))
    slots = p.num_coefficients
    assert _uniformity_pvalue(truth, t) < 1e-12
    for guess in guesses:
        assert _uniformity_pvalue(guess, t) > 1e-6
        assert stats.kstest(guess / t, "uniform").pvalue > 1e-6
        assert np.count_nonzero(guess == truth) <= max(5, 10 * slots // t)

    # No file anywhere in the run holds the whole key, in any form it could be written in.
    s_int = s[0].astype(np.int64)
    s_int[s_int > p.primes[0] // 2] -= p.primes[0]
    forms = [
        b"".join(pack_bits(s[j], b) for j, b in enumerate(p.prime_bits)),
        s.astype("<u8").tobytes(),
        rns.ntt(s).astype("<u8").tobytes(),
        s_int.astype(np.int8).tobytes(),
        s_int.astype("<i8").tobytes(),
    ]
    windows = [w for f in forms for w in _windows(f)]
    files = [f for f in run.rglob("*") if f.is_file()]
    assert any(f.name.endswith(".fpkey") for f in files)
    for f in files:
        data = f.read_bytes()
        assert not any(w in data for w in windows), f"{f} holds the whole key"
    # The server-side files hold no share and no mask key.
    share_windows = [
        w
        for sh in all_shares.values()
        for w in _windows(
            b"".join(pack_bits(sh.residues()[j], b) for j, b in enumerate(p.prime_bits))
        )
    ]
    server = _server_files(run)
    assert any(f.name == "checkpoint.json" for f in server)
    assert any(f.name == "decryption.jsonl" for f in server)
    for f in server:
        data = f.read_bytes()
        assert not any(w in data for w in share_windows), f"{f} holds a key share"
        assert mask_key not in data and mask_key.hex() not in data.decode("latin-1"), f
