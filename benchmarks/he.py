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

Run: ``python -m benchmarks.he`` (``--quick``: 100k values only).
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


def default_model_sizes(max_weight: int) -> list[dict[str, Any]]:
    """Upload/download of the default model (6,090 values, 10 clients): chosen N vs N=4096."""
    from fedpriv.crypto import Aggregator, KeyHolder, choose_params

    n, k = 6090, 10
    rng = np.random.default_rng(0)
    out = []
    for label, degree in (("automatic N", 0), ("N=4096 (before)", 4096)):
        p = choose_params("bfv", n, k, max_weight, VALUE_RANGE, poly_modulus_degree=degree)
        kh, agg = KeyHolder.generate(p), Aggregator(p)
        ups = []
        for _ in range(k):
            blob = kh.encrypt(rng.normal(0, 0.3, n).astype(np.float32), max_weight).blob
            ups.append(len(blob))
            agg.add(blob)
        out.append(
            {
                "label": label,
                "params": _describe(p),
                "ciphertexts": p.num_ciphertexts,
                "upload_x_float32": median(ups) / (4 * n),
                "download_x_float32": len(agg.result()) / (4 * n),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k values only")
    ap.add_argument("--default-model-only", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--max-weight", type=int, default=256)
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        server_worker(a.worker[0], a.worker[1], int(a.worker[2]), a.worker[3])
        return
    small = default_model_sizes(a.max_weight)
    print_table(
        "Default model (6,090 values, 10 clients): BFV sizes by ring degree",
        ["ring", "parameters", "ciphertexts", "upload x f32", "download x f32"],
        [
            [
                x["label"],
                x["params"],
                x["ciphertexts"],
                x["upload_x_float32"],
                x["download_x_float32"],
            ]
            for x in small
        ],
    )
    if a.default_model_only:  # refresh this table inside an earlier full result
        doc = read_json("he")
        if doc:
            doc["main_run"] = {k: doc.pop(k, None) for k in ("when", "machine")}
            doc.pop("benchmark", None)
            doc["default_model"] = small
            doc.setdefault("targets", {}).update(
                upload_default_model=small[0]["upload_x_float32"],
                download_default_model=small[0]["download_x_float32"],
            )
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
    bfv10 = [c for c in cases if c["scheme"] == "bfv" and c["clients"] == 10]
    targets = {
        "upload_default_model": small[0]["upload_x_float32"],
        "download_default_model": small[0]["download_x_float32"],
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
    write_json(
        "he",
        {
            "max_weight": a.max_weight,
            "value_range": VALUE_RANGE,
            "cpu_count": os.cpu_count(),
            "default_model": small,
            "cases": cases,
            "streaming": stream,
            "targets": targets,
        },
    )


if __name__ == "__main__":
    main()
