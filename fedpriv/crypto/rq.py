"""Exact arithmetic in R_q = Z_q[X]/(X^N + 1) for an RNS modulus q = q_1 ... q_L, in numpy.

Every prime is below 2^32 and congruent to 1 mod 2N, so a product of two residues fits a uint64
and the negacyclic number-theoretic transform (NTT) exists. A polynomial is a uint64 array whose
last two axes are (prime, coefficient): shape ``(..., L, N)`` with residue ``[..., j, i] < q_j``.

The forward transform is the Cooley-Tukey negacyclic NTT with the powers of psi (a primitive
2N-th root of unity) in bit-reversed order and its output in bit-reversed order, the convention
of SEAL's ``ntt_negacyclic_harvey``; psi is the smallest primitive 2N-th root, as SEAL chooses
it, so the transform of a secret key here equals SEAL's NTT form (``tests/unit/test_rq.py``).
The inverse is the Gentleman-Sande transform. Each butterfly stage is one vectorised pass over
all coefficients (and all polynomials of a batch); the only Python loops run over the L primes
and the log2(N) stages. Reductions use numpy's uint64 remainder by a scalar, which numpy turns
into a multiplication (libdivide), so they cost about as much as Shoup's trick without its tables.

Also here: bit-packing of residues to ``bits`` bits each, and the scaling ``round(2^b x / q)``
that compresses an RNS polynomial to b bits (HPS-style fractional sum in float64).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = [
    "MAX_PRIME_BITS",
    "RnsContext",
    "bit_reverse_permutation",
    "find_ntt_primes",
    "is_prime",
    "minimal_primitive_root",
    "pack_bits",
    "uniform_mod",
    "unpack_bits",
]

MAX_PRIME_BITS = 32
_U64 = np.uint64


def is_prime(n: int) -> bool:
    """Deterministic Miller-Rabin for n < 3.3e24."""
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
    for p in small:
        if n % p == 0:
            return n == p
    d, r = n - 1, 0
    while d % 2 == 0:
        d //= 2
        r += 1
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(r - 1):
            x = pow(x, 2, n)
            if x == n - 1:
                break
        else:
            return False
    return True


def find_ntt_primes(n: int, bits: int, count: int, exclude: Sequence[int] = ()) -> list[int]:
    """The ``count`` largest primes below 2^bits that are 1 mod 2n, largest first.

    The same primes as SEAL's ``CoeffModulus.Create(n, [bits] * count)`` and, for one prime,
    ``PlainModulus.Batching(n, bits)``.
    """
    step = 2 * n
    if bits > 61 or (1 << bits) <= step:
        raise ValueError(f"no {bits}-bit primes that are 1 mod {step}")
    out: list[int] = []
    skip = set(exclude)
    c = ((1 << bits) - 1) // step * step + 1
    if c >= 1 << bits:
        c -= step
    while len(out) < count:
        if c < 1 << (bits - 1):
            raise ValueError(f"not enough {bits}-bit primes that are 1 mod {step}")
        if c not in skip and is_prime(c):
            out.append(c)
        c -= step
    return out


def minimal_primitive_root(order: int, p: int) -> int:
    """The smallest primitive ``order``-th root of unity mod p (order a power of two)."""
    if (p - 1) % order:
        raise ValueError(f"{p} has no primitive {order}-th root of unity")
    cofactor = (p - 1) // order
    root = 0
    for g in range(2, p):
        r = pow(g, cofactor, p)
        if pow(r, order // 2, p) == p - 1:
            root = r
            break
    # All primitive roots are root^k for odd k: walk them with root^2 and keep the smallest.
    sq, x, best = root * root % p, root, root
    for _ in range(order // 2 - 1):
        x = x * sq % p
        best = min(best, x)
    return best


@lru_cache(maxsize=16)
def bit_reverse_permutation(n: int) -> np.ndarray:
    """Index array r with r[i] = i with its log2(n) bits reversed."""
    bits = n.bit_length() - 1
    idx = np.arange(n, dtype=np.int64)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev


def _powers(base: int, n: int, p: int) -> np.ndarray:
    """[base^0, ..., base^(n-1)] mod p, by doubling blocks (log2(n) vector steps)."""
    out = np.ones(n, dtype=_U64)
    pu = _U64(p)
    k, cur = 1, base % p
    while k < n:
        np.remainder(out[:k] * _U64(cur), pu, out=out[k : 2 * k])
        k *= 2
        cur = cur * cur % p
    return out


def _shoup(w: np.ndarray, moduli: np.ndarray) -> np.ndarray:
    """floor(w * 2^32 / p) per row (w < p < 2^32), for :func:`_mul_shoup`."""
    out = np.empty_like(w)
    for j, p in enumerate(moduli.tolist()):
        out[j] = (w[j] << _U64(32)) // _U64(p)
    return out


def _mul_shoup(a: np.ndarray, w: np.ndarray, ws: np.ndarray, q: np.ndarray) -> np.ndarray:
    """a * w mod q for a < 2^32, w < q < 2^32 (Shoup): exact, fully reduced, broadcasting."""
    r = a * w
    r -= ((a * ws) >> _U64(32)) * q  # a*ws < 2^64; r in [0, 2q)
    np.minimum(r, r - q, out=r)
    return r


def uniform_mod(p: int, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform integers in [0, p) from the OS CSPRNG (exact: rejection sampling)."""
    count = int(np.prod(shape))
    bits = p.bit_length()
    mask = (1 << bits) - 1
    nbytes = 4 if bits <= 32 else 8
    out = np.empty(0, dtype=_U64)
    while out.size < count:
        need = count - out.size
        draw = int(need * 2.1) + 16  # acceptance >= 1/2
        raw = np.frombuffer(os.urandom(draw * nbytes), dtype="<u4" if nbytes == 4 else "<u8")
        cand = raw.astype(_U64) & _U64(mask)
        out = np.concatenate([out, cand[cand < _U64(p)][:need]])
    return out.reshape(shape)


class RnsContext:
    """NTT tables and vectorised arithmetic for R_q with q the product of ``primes``."""

    def __init__(self, n: int, primes: Sequence[int]) -> None:
        if n < 2 or n & (n - 1):
            raise ValueError(f"ring degree must be a power of two, got {n}")
        ps = [int(p) for p in primes]
        if not ps or len(set(ps)) != len(ps):
            raise ValueError("primes must be distinct and non-empty")
        for p in ps:
            if p.bit_length() > MAX_PRIME_BITS or (p - 1) % (2 * n) or not is_prime(p):
                raise ValueError(f"{p} is not a prime below 2^32 that is 1 mod {2 * n}")
        self.n = n
        self.primes = tuple(ps)
        self.moduli = np.array(ps, dtype=_U64)
        self.modulus = 1
        for p in ps:
            self.modulus *= p
        rev = bit_reverse_permutation(n)
        psi_rev, psi_inv_rev, n_inv = [], [], []
        for p in ps:
            psi = minimal_primitive_root(2 * n, p)
            psi_rev.append(_powers(psi, n, p)[rev])
            psi_inv_rev.append(_powers(pow(psi, -1, p), n, p)[rev])
            n_inv.append(pow(n, -1, p))
        # Twiddles and their Shoup companions floor(w * 2^32 / p), shape (L, N): with them a
        # product a*w mod p (a < 2^32) is a*w - floor(a*w'/2^32)*p in [0, 2p), all primes at once.
        self._w = np.stack(psi_rev)
        self._w_shoup = _shoup(self._w, self.moduli)
        self._wi = np.stack(psi_inv_rev)
        self._wi_shoup = _shoup(self._wi, self.moduli)
        self._n_inv = np.array(n_inv, dtype=_U64)[:, None]
        self._n_inv_shoup = _shoup(self._n_inv, self.moduli)
        # CRT: y_j = x_j * (q/q_j)^-1 mod q_j, then x/q = sum_j y_j / q_j (mod 1).
        self._qhat_inv = [pow(self.modulus // p, -1, p) for p in ps]

    @property
    def size(self) -> int:
        """Number of primes L."""
        return len(self.primes)

    def _check(self, a: np.ndarray) -> None:
        if a.dtype != _U64 or a.shape[-2:] != (self.size, self.n):
            raise ValueError(
                f"expected uint64 (..., {self.size}, {self.n}), got {a.dtype} {a.shape}"
            )

    # ------------------------------------------------------------------ transforms
    def ntt(self, a: np.ndarray) -> np.ndarray:
        """Negacyclic NTT of every polynomial of ``a`` (new array, bit-reversed order)."""
        self._check(a)
        lead = a.shape[:-2]
        size, n = self.size, self.n
        x = np.array(a, dtype=_U64, copy=True).reshape(-1, size, n)
        q = self.moduli[None, :, None, None]
        m, t = 1, n
        while m < n:
            t //= 2
            v = x.reshape(-1, size, m, 2, t)
            lo = v[:, :, :, 0, :]
            hi = v[:, :, :, 1, :]
            w = self._w[None, :, m : 2 * m, None]
            ws = self._w_shoup[None, :, m : 2 * m, None]
            prod = _mul_shoup(hi, w, ws, q)
            np.subtract(lo, prod, out=hi)
            hi += q  # lo - prod + p in [1, 2p)
            lo += prod  # [0, 2p)
            np.minimum(hi, hi - q, out=hi)  # uint64 wrap-around: min picks the reduced value
            np.minimum(lo, lo - q, out=lo)
            m *= 2
        return x.reshape((*lead, size, n))

    def intt(self, a: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`ntt` (input in bit-reversed order, output in coefficient order)."""
        self._check(a)
        lead = a.shape[:-2]
        size, n = self.size, self.n
        x = np.array(a, dtype=_U64, copy=True).reshape(-1, size, n)
        q = self.moduli[None, :, None, None]
        m, t = n // 2, 1
        while m >= 1:
            v = x.reshape(-1, size, m, 2, t)
            lo = v[:, :, :, 0, :]
            hi = v[:, :, :, 1, :]
            d = lo + q - hi  # [1, 2p)
            np.minimum(d, d - q, out=d)
            lo += hi
            np.minimum(lo, lo - q, out=lo)
            w = self._wi[None, :, m : 2 * m, None]
            ws = self._wi_shoup[None, :, m : 2 * m, None]
            hi[...] = _mul_shoup(d, w, ws, q)
            m //= 2
            t *= 2
        x = _mul_shoup(x, self._n_inv[None], self._n_inv_shoup[None], self.moduli[None, :, None])
        return x.reshape((*lead, size, n))

    # ------------------------------------------------------------------ arithmetic
    def add(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        s = a + b
        q = self.moduli[:, None]
        return np.minimum(s, s - q)

    def add_inplace(self, acc: np.ndarray, b: np.ndarray) -> None:
        acc += b
        np.minimum(acc, acc - self.moduli[:, None], out=acc)

    def sub(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        q = self.moduli[:, None]
        s = a + q - b
        return np.minimum(s, s - q)

    def neg(self, a: np.ndarray) -> np.ndarray:
        q = self.moduli[:, None]
        s = q - a
        return np.minimum(s, s - q)

    def mul_pointwise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Coefficient-wise product mod q_j (the ring product when both are in NTT form)."""
        out = np.multiply(a, b, dtype=_U64)
        for j, p in enumerate(self.primes):
            np.remainder(out[..., j, :], _U64(p), out=out[..., j, :])
        return out

    def mul_scalars(self, a: np.ndarray, scalars: Sequence[int]) -> np.ndarray:
        """Multiply residue row j by ``scalars[j]`` (an RNS constant) mod q_j."""
        out = np.empty_like(a)
        for j, p in enumerate(self.primes):
            np.multiply(a[..., j, :], _U64(int(scalars[j]) % p), out=out[..., j, :])
            np.remainder(out[..., j, :], _U64(p), out=out[..., j, :])
        return out

    def mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The negacyclic product a*b in R_q (both in coefficient form)."""
        return self.intt(self.mul_pointwise(self.ntt(a), self.ntt(b)))

    # ------------------------------------------------------------------ conversions
    def from_signed(self, x: np.ndarray) -> np.ndarray:
        """RNS residues of small signed integers (int64, |x| < 2^62): shape (..., N) -> (..., L, N)."""
        x = np.asarray(x, dtype=np.int64)
        out = np.empty((*x.shape[:-1], self.size, self.n), dtype=_U64)
        for j, p in enumerate(self.primes):
            out[..., j, :] = np.mod(x, p).astype(_U64)
        return out

    def from_ints(self, coeffs: Sequence[int]) -> np.ndarray:
        """RNS residues of one polynomial given as Python integers (any size, tests)."""
        return np.array([[c % p for c in coeffs] for p in self.primes], dtype=_U64)

    def to_centered_ints(self, a: np.ndarray) -> list[int]:
        """CRT-reconstruct one polynomial to centred Python integers in (-q/2, q/2] (slow; tests)."""
        self._check(a)
        q = self.modulus
        acc = [0] * self.n
        for j, p in enumerate(self.primes):
            qj = q // p
            f = qj * self._qhat_inv[j] % q
            row = a[j].tolist()
            for i in range(self.n):
                acc[i] += row[i] * f
        out = []
        for v in acc:
            v %= q
            out.append(v - q if v > q // 2 else v)
        return out

    def scale_round_pow2(self, a: np.ndarray, bits: int) -> np.ndarray:
        """round(2^bits * x / q) mod 2^bits for every coefficient x of ``a`` (shape (..., L, N)).

        With y_j = x_j * (q/q_j)^-1 mod q_j, x/q = sum_j y_j/q_j minus an integer, so
        2^bits * x/q = sum_j y_j * (2^bits/q_j) (mod 2^bits). The sum is formed in float64: every
        term is below 2^bits, so for bits <= 40 and L <= 8 the absolute error stays below 2^-10 and
        the result is within 1/2 + 2^-10 of 2^bits * x/q (mod 2^bits). It is a deterministic function
        of x, which is all the compression needs (its error is counted in the noise budget).
        """
        self._check(a)
        if not 1 <= bits <= 40:
            raise ValueError(f"bits must be in 1..40, got {bits}")
        scale = float(1 << bits)
        acc = np.zeros((*a.shape[:-2], self.n), dtype=np.float64)
        for j, p in enumerate(self.primes):
            y = a[..., j, :] * _U64(self._qhat_inv[j])
            np.remainder(y, _U64(p), out=y)
            acc += y.astype(np.float64) * (scale / p)
        np.rint(acc, out=acc)
        return acc.astype(_U64) & _U64((1 << bits) - 1)


# --------------------------------------------------------------------------- bit packing
def _layout(bits: int) -> list[tuple[int, int]]:
    """(word, offset) of each of 8 consecutive ``bits``-bit values in a little-endian stream."""
    return [divmod(k * bits, 64) for k in range(8)]


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers below 2^bits (1 <= bits <= 64) into ceil(n*bits/8) bytes.

    Value i occupies bits [i*bits, (i+1)*bits) of a little-endian bit stream. Eight values fill
    exactly ``bits`` bytes, so the work is eight vector passes over n/8 groups. Callers check
    the range; bits above ``bits`` must be zero.
    """
    v = np.ascontiguousarray(values, dtype=_U64).reshape(-1)
    n = v.size
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    groups = -(-n // 8)
    if n % 8:
        v = np.concatenate([v, np.zeros(groups * 8 - n, dtype=_U64)])
    g = v.reshape(groups, 8)
    nwords = -(-8 * bits // 64) + 1
    words = np.zeros((groups, nwords), dtype=_U64)
    for k, (w, o) in enumerate(_layout(bits)):
        words[:, w] |= g[:, k] << _U64(o)
        if o + bits > 64:
            words[:, w + 1] |= g[:, k] >> _U64(64 - o)
    raw = words.astype("<u8").view(np.uint8).reshape(groups, 8 * nwords)[:, :bits]
    return raw.tobytes()[: (n * bits + 7) // 8]


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`. Raises ValueError on a wrong length or non-zero padding."""
    if not 1 <= bits <= 64:
        raise ValueError(f"bits must be in 1..64, got {bits}")
    need = (count * bits + 7) // 8
    if len(data) != need:
        raise ValueError(f"expected {need} packed bytes, got {len(data)}")
    groups = -(-count // 8)
    nwords = -(-8 * bits // 64) + 1
    buf = np.zeros((groups, 8 * nwords), dtype=np.uint8)
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[:need] = np.frombuffer(data, dtype=np.uint8)
    buf[:, :bits] = flat.reshape(groups, bits)
    words = buf.view("<u8").astype(_U64)
    out = np.empty((groups, 8), dtype=_U64)
    mask = _U64((1 << bits) - 1) if bits < 64 else _U64(0xFFFFFFFFFFFFFFFF)
    for k, (w, o) in enumerate(_layout(bits)):
        col = words[:, w] >> _U64(o)
        if o + bits > 64:
            col |= words[:, w + 1] << _U64(64 - o)
        out[:, k] = col & mask
    vals = out.reshape(-1)
    if np.any(vals[count:]):  # the tail bits of the last byte land in vals[count]
        raise ValueError("non-zero padding bits after the last value")
    return vals[:count].copy()
