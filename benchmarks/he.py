"""Encrypted aggregation cost: sizes, speed, error and server memory per scheme and parameter set.

For flattened updates of 100k and 1M float32 values and 10 and 100 clients per round, with
weights (example counts) up to ``--max-weight`` (default 256; the default digits run's largest
client has 184) and values in [-4, 4] (the default ``encryption.value_range``):

* ``plaintext``: encryption off (fedpriv's float64 codec), the baseline;
* ``fedpriv BFV``: the default path, seeded symmetric BFV through ``tenseal.sealapi``, parameters
  from ``choose_params`` (they depend on the number of clients);
* ``fedpriv CKKS``: ``encryption.scheme = "ckks"`` with its defaults, N=8192 primes
  [60, 40, 40, 60], scale 2^40 -- the same parameters as TenSEAL's tutorial;
* ``CKKS [60,40,40]``: NVFlare's default, N=8192 primes [60, 40, 40], scale 2^40, through the
  same code path.

Reported: upload and download bytes as a multiple of the float32 bytes (4 per value), client
encryption throughput (values per wall second and per CPU second of the encrypting process),
server aggregation time per client update (validation, deserialization and addition), client
decryption time, the largest error of the decrypted weighted mean against the float64 weighted
mean of the same (float32) values, and the server's peak memory.

The server runs in a fresh process per case: it reads the updates one at a time from files (as
they would arrive), adds them to a running sum, and reports its peak RSS (VmHWM). Streaming
means 100 clients cost at most 1.5x the memory of 10. To keep the run short on 2 cores, only a
few distinct client updates are encrypted (10 for 100k values, 4 for 1M) and the server gets
them in turn, each blob reused K/distinct times: the server's work is the same as with K
distinct updates, and the plaintext reference counts each reuse.

Threshold custody (``fedpriv.crypto.threshold``) is compared with shared custody (the default
BFV above) side by side in one process, on the default model (6,090 values) and 100k values, at
10 clients (10 parties, threshold 6) and 100 clients (100 parties, threshold 51): upload and
partial-decryption bytes as multiples of the float32 bytes, client CPU per round (encrypt +
partial decrypt + combine and decode) against shared custody's encrypt + decrypt, and server CPU
per update. CPU is ``time.process_time`` medians over interleaved repetitions.

BFV blobs are wire version 2 (coefficients bit-packed to the bit size of q) unless a row says
otherwise; the default-model table compares both versions at 10 and 100 clients.

Run: ``python -m benchmarks.he`` (``--quick``: 100k values only; ``--threshold``: only the
threshold comparison, updating the ``threshold`` section of the result file; with ``--quick``,
the default model only, a few seconds; ``--default-model-only``: refresh the default-model
table; ``--smoke``: tiny sizes, written to ``he_smoke.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    MIB,
    hwm_bytes,
    median,
    print_table,
    read_json,
    rss_bytes,
    run_worker,
    timed,
    write_json,
)

VALUE_RANGE = 4.0


@dataclass(frozen=True)
class Setup:
    label: str
    scheme: str  # off | bfv | ckks
    degree: int = 0
    bits: tuple[int, ...] = ()
    scale_bits: int = 40


SETUPS = (
    Setup("plaintext (encryption off)", "off"),
    Setup("fedpriv BFV (default)", "bfv"),
    Setup("fedpriv CKKS = TenSEAL tutorial N=8192 [60,40,40,60] 2^40", "ckks"),
    Setup("CKKS N=8192 [60,40,40] 2^40 (NVFlare)", "ckks", 8192, (60, 40, 40), 40),
)


def _params(s: Setup, n: int, k: int, max_weight: int) -> Any:
    if s.scheme == "off":
        from fedpriv.crypto.plain import PlainParams

        return PlainParams(n, k)
    from fedpriv.crypto import choose_params

    return choose_params(
        s.scheme,
        n,
        max_clients=k,
        max_weight=max_weight,
        value_range=VALUE_RANGE,
        poly_modulus_degree=s.degree,
        coeff_modulus_bits=s.bits,
        scale_bits=s.scale_bits,
    )


def _client(params: Any) -> tuple[Callable[[np.ndarray, int], bytes], Callable[[bytes], Any]]:
    """(encrypt(values, weight) -> blob, decrypt(blob) -> (weighted sum, total weight, count))."""
    if params.scheme == "off":
        from fedpriv.crypto.plain import PlainCodec

        codec = PlainCodec(params)
        return codec.encode, codec.decode
    from fedpriv.crypto import KeyHolder

    kh = KeyHolder.generate(params)

    def dec(blob: bytes) -> tuple[np.ndarray, float, int]:
        agg = kh.decrypt(blob)
        return agg.weighted_sum, float(agg.total_weight), agg.count

    return (lambda v, w: kh.encrypt(v, w).blob), dec


def _describe(params: Any) -> str:
    if params.scheme == "off":
        return "float64"
    if params.scheme == "bfv":
        return (
            f"N={params.poly_modulus_degree} q={list(params.coeff_modulus_bits)} "
            f"t={params.plain_modulus.bit_length()}b s={params.quant_scale:g}"
        )
    return f"N={params.poly_modulus_degree} {list(params.coeff_modulus_bits)} 2^{params.scale_bits}"


# --------------------------------------------------------------------------- server process
def server_worker(params_path: str, blob_dir: str, k: int, out_path: str) -> None:
    """Fresh process: stream ``k`` update blobs into an aggregator; report time and peak memory."""
    from fedpriv.crypto.codec import open_aggregator, params_from_dict

    params = params_from_dict(json.loads(Path(params_path).read_text()))
    agg = open_aggregator(params)
    files = sorted(Path(blob_dir).glob("update_*.bin"))
    base_hwm, base_rss = hwm_bytes(), rss_bytes()
    read_s: list[float] = []
    add_s: list[float] = []
    add_cpu: list[float] = []
    for i in range(k):
        t0 = time.perf_counter()
        blob = files[i % len(files)].read_bytes()
        t1, c1 = time.perf_counter(), time.process_time()
        agg.add(blob)
        add_s.append(time.perf_counter() - t1)
        add_cpu.append(time.process_time() - c1)
        read_s.append(t1 - t0)
        del blob
    t0 = time.perf_counter()
    result = agg.result()
    result_s = time.perf_counter() - t0
    Path(out_path).write_bytes(result)
    print(
        json.dumps(
            {
                "count": agg.count,
                "base_hwm": base_hwm,
                "base_rss": base_rss,
                "peak_hwm": hwm_bytes(),
                "add_s": add_s,
                "add_cpu_s": add_cpu,
                "read_s": read_s,
                "result_s": result_s,
                "aggregate_bytes": len(result),
            }
        )
    )


# --------------------------------------------------------------------------- one case
def run_case(s: Setup, n: int, k: int, max_weight: int, distinct: int) -> dict[str, Any]:
    params = _params(s, n, k, max_weight)
    encrypt, decrypt = _client(params)
    rng = np.random.default_rng(n + k)
    d = min(k, distinct)
    weights = [int(w) for w in rng.integers(max_weight // 2, max_weight + 1, d)]
    enc_wall: list[float] = []
    enc_cpu: list[float] = []
    up_bytes: list[int] = []
    expected = np.zeros(n, dtype=np.float64)
    total_w = 0
    with tempfile.TemporaryDirectory(prefix="fedpriv-bench-he-") as tmp:
        tdir = Path(tmp)
        for j in range(d):
            # Typical weights: mostly small, a few large; all inside the value range.
            x = np.clip(rng.normal(0.0, 0.3, n), -VALUE_RANGE, VALUE_RANGE).astype(np.float32)
            w0, c0 = time.perf_counter(), time.process_time()
            blob = encrypt(x, weights[j])
            enc_wall.append(time.perf_counter() - w0)
            enc_cpu.append(time.process_time() - c0)
            up_bytes.append(len(blob))
            (tdir / f"update_{j:04d}.bin").write_bytes(blob)
            uses = len(range(j, k, d))  # how often the server gets this blob
            expected += uses * weights[j] * x.astype(np.float64)
            total_w += uses * weights[j]
            del blob
        expected /= total_w
        (tdir / "params.json").write_text(json.dumps(params.to_dict()))
        srv = run_worker(
            "benchmarks.he",
            [str(tdir / "params.json"), str(tdir), str(k), str(tdir / "aggregate.bin")],
        )
        aggregate = (tdir / "aggregate.bin").read_bytes()
    dec_s: list[float] = []
    mean = None
    for _ in range(3):
        t0 = time.perf_counter()
        ws, tw, count = decrypt(aggregate)
        dec_s.append(time.perf_counter() - t0)
        mean = ws / tw
    assert mean is not None
    if count != k or round(tw) != total_w:
        raise RuntimeError(f"{s.label}: aggregate count {count}/{k}, weight {tw}/{total_w}")
    err = float(np.abs(mean - expected).max())
    bound = float(params.error_bound(total_w, k)) if s.scheme != "off" else 0.0
    f32 = 4 * n
    return {
        "setup": s.label,
        "scheme": s.scheme,
        "params": _describe(params),
        "num_values": n,
        "clients": k,
        "distinct_updates": d,
        "upload_x_float32": median(up_bytes) / f32,
        "download_x_float32": len(aggregate) / f32,
        "upload_bytes": int(median(up_bytes)),
        "download_bytes": len(aggregate),
        "encrypt_values_per_s": n / median(enc_wall),
        "encrypt_values_per_cpu_s": n / median(enc_cpu),
        "encrypt_s": enc_wall,
        "aggregate_s_per_update": median(srv["add_s"]),
        "aggregate_cpu_s_per_update": median(srv["add_cpu_s"]),
        "server_read_s_per_update": median(srv["read_s"]),
        "server_result_s": srv["result_s"],
        "decrypt_s": median(dec_s),
        "max_abs_error": err,
        "error_bound": bound,
        "server_peak_mib": srv["peak_hwm"] / MIB,
        "server_base_mib": srv["base_hwm"] / MIB,
        "server_growth_mib": (srv["peak_hwm"] - srv["base_rss"]) / MIB,
    }


def default_model_sizes(max_weight: int, n: int = 6090) -> list[dict[str, Any]]:
    """Upload/download of the default model (6,090 values) at 10 and 100 clients per round:
    wire version 2 (bit-packed) against version 1 (SEAL's zstd serialization), and the ring
    degree choice (automatic N against N = 4096) at 10 clients."""
    from fedpriv.crypto import Aggregator, KeyHolder, choose_params

    rng = np.random.default_rng(0)
    out = []
    for label, k, degree, version in (
        ("automatic N, packed (v2)", 10, 0, 2),
        ("automatic N, SEAL zstd (v1)", 10, 0, 1),
        ("N=4096, SEAL zstd (v1)", 10, 4096, 1),
        ("automatic N, packed (v2)", 100, 0, 2),
        ("automatic N, SEAL zstd (v1)", 100, 0, 1),
    ):
        p = choose_params("bfv", n, k, max_weight, VALUE_RANGE, poly_modulus_degree=degree)
        kh, agg = KeyHolder.generate(p), Aggregator(p)
        ups = []
        for _ in range(min(k, 10)):
            x = rng.normal(0, 0.3, n).astype(np.float32)
            blob = kh.encrypt(x, max_weight, wire_version=version).blob
            ups.append(len(blob))
            agg.add(blob)
        if version == 1:  # the aggregate in version 1 form: what the server sent before
            from fedpriv.crypto import wire

            down = len(
                wire.pack(p, 2, [agg._public.dump(c) for c in agg._sum])  # type: ignore[union-attr]
            )
        else:
            down = len(agg.result())
        out.append(
            {
                "label": label,
                "clients": k,
                "wire_version": version,
                "params": _describe(p),
                "ciphertexts": p.num_ciphertexts,
                "padding": p.num_ciphertexts * p.slots_per_ciphertext / (n + 2),
                "upload_x_float32": median(ups) / (4 * n),
                "download_x_float32": down / (4 * n),
            }
        )
    return out


# --------------------------------------------------------------------------- threshold custody
THRESHOLD_SETUPS = ((10, 10, 6), (100, 100, 51))  # (clients per round, parties, threshold)


def threshold_case(
    n: int, k: int, parties: int, threshold: int, reps: int, max_weight: int
) -> dict[str, Any]:
    """Threshold vs shared custody for one model size and round size, in this process."""
    from fedpriv.crypto import Aggregator, KeyHolder, choose_params
    from fedpriv.crypto import threshold as th
    from fedpriv.crypto.tparams import choose_threshold_params

    tp = choose_threshold_params(n, k, max_weight, VALUE_RANGE, parties, threshold)
    sp = choose_params("bfv", n, k, max_weight, VALUE_RANGE)
    deal_s, deal_cpu, dealt = timed(lambda: th.deal(tp, list(range(1, threshold + 1))))
    kid = dealt.key_id
    enc = th.ThresholdEncryptor(tp, dealt.public_key)
    kh = KeyHolder.generate(sp)
    rng = np.random.default_rng(n + k)
    d = min(k, 4)
    xs = [
        np.clip(rng.normal(0.0, 0.3, n), -VALUE_RANGE, VALUE_RANGE).astype(np.float32)
        for _ in range(d)
    ]
    ws = [int(w) for w in rng.integers(max_weight // 2, max_weight + 1, d)]
    t_blobs, s_blobs = [], []
    t_enc, s_enc = [], []
    for j in range(d):
        for _ in range(max(1, reps // d)):
            _, c, tb = timed(lambda j=j: enc.encrypt(xs[j], ws[j]).blob)
            t_enc.append(c)
            _, c, sb = timed(lambda j=j: kh.encrypt(xs[j], ws[j]).blob)
            s_enc.append(c)
        t_blobs.append(tb)
        s_blobs.append(sb)
    t_agg, s_agg = th.ThresholdAggregator(tp, kid), Aggregator(sp)
    t_add, s_add = [], []
    expected = np.zeros(n)
    for i in range(k):
        t_add.append(timed(lambda i=i: t_agg.add(t_blobs[i % d]))[1])
        s_add.append(timed(lambda i=i: s_agg.add(s_blobs[i % d]))[1])
        expected += ws[i % d] * xs[i % d].astype(np.float64)
    total_w = sum(ws[i % d] for i in range(k))
    aggregate, s_aggregate = t_agg.result(), s_agg.result()
    ps = list(range(1, threshold + 1))
    shares = {s.index: s for s in dealt.shares}
    partials = [shares[i].partial_decrypt(aggregate, ps) for i in ps]
    t_part, t_comb, t_fin, s_dec = [], [], [], []
    out = None
    for r in range(reps):
        t_part.append(
            timed(lambda r=r: shares[ps[r % threshold]].partial_decrypt(aggregate, ps))[1]
        )
        _, c, combined = timed(lambda: th.combine_partials(tp, aggregate, partials, kid))
        t_comb.append(c)
        _, c, out = timed(lambda combined=combined: th.finish_decryption(tp, combined, kid))
        t_fin.append(c)
        s_dec.append(timed(lambda: kh.decrypt(s_aggregate))[1])
    assert out is not None
    err = float(np.abs(out.mean() - expected / total_w).max())
    if out.count != k or out.total_weight != total_w or err > tp.error_bound(total_w, k):
        raise RuntimeError(f"threshold decryption wrong: count {out.count}, error {err:.3g}")
    f32 = 4 * n
    enc_ms, part_ms = median(t_enc) * 1e3, median(t_part) * 1e3
    comb_ms, fin_ms = median(t_comb) * 1e3, median(t_fin) * 1e3
    shared_ms = (median(s_enc) + median(s_dec)) * 1e3
    b = tp.noise_budget()
    return {
        "num_values": n,
        "clients": k,
        "parties": parties,
        "threshold": threshold,
        "params": (
            f"N={tp.poly_modulus_degree} q={sum(tp.prime_bits)}b {list(tp.prime_bits)} "
            f"t={tp.plain_modulus.bit_length()}b b={tp.compress_bits} W=2^{tp.flood_bits}"
        ),
        "threshold_params": tp.to_dict(),
        "statistical_distance_log2": b.statistical_distance_log2,
        "failure_log2": b.failure_log2,
        "upload_x_float32": len(t_blobs[0]) / f32,
        "shared_upload_x_float32": len(s_blobs[0]) / f32,
        "partial_x_float32": len(partials[0]) / f32,
        "aggregate_x_float32": len(aggregate) / f32,
        "combined_x_float32": th.partial_blob_bytes(tp) / f32,
        "shared_download_x_float32": len(s_aggregate) / f32,
        "deal_cpu_s": deal_cpu,
        "deal_wall_s": deal_s,
        "encrypt_cpu_ms": enc_ms,
        "partial_cpu_ms": part_ms,
        "combine_cpu_ms": comb_ms,
        "finish_cpu_ms": fin_ms,
        "shared_encrypt_cpu_ms": median(s_enc) * 1e3,
        "shared_decrypt_cpu_ms": median(s_dec) * 1e3,
        # A decrypting client that combines itself vs shared custody's encrypt + decrypt.
        "client_cpu_ms": enc_ms + part_ms + comb_ms + fin_ms,
        "client_cpu_x_shared": (enc_ms + part_ms + comb_ms + fin_ms) / shared_ms,
        # Average over the round's clients when the server combines: T/K of them decrypt.
        "client_cpu_avg_x_shared": (enc_ms + threshold / k * part_ms + fin_ms) / shared_ms,
        "server_cpu_ms_per_update": median(t_add) * 1e3,
        "shared_server_cpu_ms_per_update": median(s_add) * 1e3,
        "max_abs_error": err,
    }


def threshold_rows(quick: bool, max_weight: int) -> list[dict[str, Any]]:
    sizes = (6090,) if quick else (6090, 100_000)
    reps = 3 if quick else 9
    out = []
    for n in sizes:
        for k, parties, thr in THRESHOLD_SETUPS:
            print(f"threshold custody: {n:,} values, {k} clients ...", file=sys.stderr, flush=True)
            out.append(threshold_case(n, k, parties, thr, reps if n < 50_000 else 3, max_weight))
    print_table(
        "Threshold vs shared custody (BFV; CPU medians in one process, ratios side by side)",
        [
            "values",
            "clients",
            "T of n",
            "threshold parameters",
            "upload x f32 (shared)",
            "partial x f32",
            "combined x f32",
            "encrypt ms",
            "partial ms",
            "combine + decode ms",
            "shared enc + dec ms",
            "client CPU x shared",
            "avg client x shared",
            "server ms/update (shared)",
        ],
        [
            [
                c["num_values"],
                c["clients"],
                f"{c['threshold']} of {c['parties']}",
                c["params"],
                f"{c['upload_x_float32']:.3f} ({c['shared_upload_x_float32']:.3f})",
                c["partial_x_float32"],
                c["combined_x_float32"],
                c["encrypt_cpu_ms"],
                c["partial_cpu_ms"],
                c["combine_cpu_ms"] + c["finish_cpu_ms"],
                c["shared_encrypt_cpu_ms"] + c["shared_decrypt_cpu_ms"],
                c["client_cpu_x_shared"],
                c["client_cpu_avg_x_shared"],
                f"{c['server_cpu_ms_per_update']:.2f} ({c['shared_server_cpu_ms_per_update']:.2f})",
            ]
            for c in out
        ],
    )
    small = [c for c in out if c["num_values"] == 6090]
    for c in small:
        print(
            f"target (threshold, default model, {c['clients']} clients): upload "
            f"{c['upload_x_float32']:.3f}x (<= 5x), partial decryption {c['partial_x_float32']:.3f}x "
            f"(<= 3x), client CPU {c['client_cpu_x_shared']:.2f}x shared (<= 2x)",
            flush=True,
        )
    return out


def _size_targets(small: list[dict[str, Any]], cases: list[dict[str, Any]]) -> dict[str, float]:
    """Upload/download ratios of the default BFV setup (packed) at 10 and 100 clients: the
    default model, and the largest over every model size measured."""
    v2 = [x for x in small if x["wire_version"] == 2]
    out: dict[str, float] = {}
    for k in (10, 100):
        dm = next((x for x in v2 if x["clients"] == k), None)
        big = [c for c in cases if c["scheme"] == "bfv" and c["clients"] == k]
        ups = [x["upload_x_float32"] for x in ([dm] if dm else []) + big]
        downs = [x["download_x_float32"] for x in ([dm] if dm else []) + big]
        if dm:
            out[f"upload_default_model_{k}"] = dm["upload_x_float32"]
            out[f"download_default_model_{k}"] = dm["download_x_float32"]
        if ups:
            out[f"upload_max_{k}"] = max(ups)
            out[f"download_max_{k}"] = max(downs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k values only")
    ap.add_argument("--default-model-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-weight", type=int, default=256)
    ap.add_argument("--threshold", action="store_true", help="threshold custody rows only")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, written to he_smoke.json")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        server_worker(a.worker[0], a.worker[1], int(a.worker[2]), a.worker[3])
        return
    if a.threshold:
        rows = threshold_rows(a.quick, a.max_weight)
        doc = read_json("he")
        if doc and not a.quick:
            doc["main_run"] = doc.get("main_run") or {k: doc.get(k) for k in ("when", "machine")}
            doc.pop("benchmark", None)
            doc["threshold"] = rows
            write_json("he", doc)
        return
    small = default_model_sizes(a.max_weight, 1000 if a.smoke else 6090)
    print_table(
        "Default model (6,090 values): BFV sizes by wire version and ring degree",
        ["clients", "encoding", "parameters", "ciphertexts", "upload x f32", "download x f32"],
        [
            [
                x["clients"],
                x["label"],
                x["params"],
                x["ciphertexts"],
                x["upload_x_float32"],
                x["download_x_float32"],
            ]
            for x in small
        ],
    )
    if a.smoke:
        c = run_case(SETUPS[1], 2000, 10, a.max_weight, 2)
        t = threshold_case(600, 4, 5, 3, reps=1, max_weight=50)
        write_json("he_smoke", {"default_model": small, "cases": [c], "threshold": [t]})
        return
    if a.default_model_only:  # refresh this table inside an earlier full result
        doc = read_json("he")
        if doc:
            doc["main_run"] = doc.get("main_run") or {k: doc.get(k) for k in ("when", "machine")}
            doc.pop("benchmark", None)
            doc["default_model"] = small
            doc.setdefault("targets", {}).update(_size_targets(small, doc.get("cases", [])))
            write_json("he", doc)
        return
    sizes = (100_000,) if a.quick else (100_000, 1_000_000)
    cases: list[dict[str, Any]] = []
    for n in sizes:
        for s in SETUPS:
            for k in (10, 100):
                print(f"{s.label}: {n:,} values, {k} clients ...", file=sys.stderr, flush=True)
                c = run_case(s, n, k, a.max_weight, 10 if n <= 100_000 else 4)
                cases.append(c)
                print(
                    f"  up {c['upload_x_float32']:.3f}x down {c['download_x_float32']:.3f}x "
                    f"enc {c['encrypt_values_per_cpu_s'] / 1e6:.2f}M/cpu-s "
                    f"agg {c['aggregate_s_per_update'] * 1e3:.1f} ms/update "
                    f"peak {c['server_peak_mib']:.0f} MiB err {c['max_abs_error']:.2g}",
                    file=sys.stderr,
                    flush=True,
                )
    rows = [
        [
            c["setup"],
            c["params"],
            c["num_values"],
            c["clients"],
            c["upload_x_float32"],
            c["download_x_float32"],
            c["encrypt_values_per_s"] / 1e6,
            c["encrypt_values_per_cpu_s"] / 1e6,
            c["aggregate_s_per_update"] * 1e3,
            c["aggregate_cpu_s_per_update"] * 1e3,
            c["decrypt_s"] * 1e3,
            c["max_abs_error"],
            c["server_peak_mib"],
        ]
        for c in cases
    ]
    print_table(
        "Encrypted aggregation (per client update; server in a fresh process)",
        [
            "setup",
            "parameters",
            "values",
            "clients",
            "upload x f32",
            "download x f32",
            "encrypt M values/s (wall)",
            "encrypt M values/CPU-s",
            "server ms/update (wall)",
            "server CPU ms/update",
            "decrypt ms",
            "max abs error",
            "server peak MiB",
        ],
        rows,
    )
    mem_rows = []
    stream: list[dict[str, Any]] = []
    for n in sizes:
        for s in SETUPS:
            by_k = {
                c["clients"]: c for c in cases if c["setup"] == s.label and c["num_values"] == n
            }
            if 10 in by_k and 100 in by_k:
                r = by_k[100]["server_peak_mib"] / by_k[10]["server_peak_mib"]
                stream.append({"setup": s.label, "num_values": n, "ratio_100_vs_10": r})
                mem_rows.append(
                    [
                        s.label,
                        n,
                        by_k[10]["server_base_mib"],
                        by_k[10]["server_peak_mib"],
                        by_k[100]["server_peak_mib"],
                        r,
                    ]
                )
    print_table(
        "Server peak memory, 100 vs 10 clients (streaming target <= 1.5x)",
        ["setup", "values", "process before MiB", "10 clients MiB", "100 clients MiB", "ratio"],
        mem_rows,
    )
    threshold = threshold_rows(a.quick, a.max_weight)
    bfv10 = [c for c in cases if c["scheme"] == "bfv" and c["clients"] == 10]
    targets = {
        **_size_targets(small, cases),
        "upload_default_max": max(c["upload_x_float32"] for c in bfv10),
        "download_default_max": max(c["download_x_float32"] for c in bfv10),
        "encrypt_values_per_cpu_s_default_min": min(c["encrypt_values_per_cpu_s"] for c in bfv10),
        "stream_ratio_max": max(x["ratio_100_vs_10"] for x in stream),
    }
    print(
        "targets (default BFV, 10 clients): upload {upload_default_max:.3f}x (<= 1.1x), "
        "download {download_default_max:.3f}x (<= 2.2x), encryption "
        "{encrypt_values_per_cpu_s_default_min:,.0f} values/CPU-s (>= 3M); "
        "server memory 100 vs 10 clients {stream_ratio_max:.2f}x (<= 1.5x)".format(**targets)
    )
    print(
        "target upload_100 (packed BFV, 100 clients): upload {upload_max_100:.3f}x (<= 1.25x), "
        "download {download_max_100:.3f}x (<= 2.5x)".format(**targets)
    )
    write_json(
        "he",
        {
            "max_weight": a.max_weight,
            "value_range": VALUE_RANGE,
            "cpu_count": os.cpu_count(),
            "default_model": small,
            "cases": cases,
            "streaming": stream,
            "threshold": threshold,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
