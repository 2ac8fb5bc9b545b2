"""The exact discrete Gaussian sampler of Canonne, Kamath and Steinke (2020), vectorised.

``N_Z(0, sigma^2)`` has ``P[X = x] proportional to exp(-x^2 / (2 sigma^2))`` on the integers.
The paper's three algorithms, every decision an exact comparison of integers:

- ``Bernoulli(exp(-gamma))`` for a rational ``gamma = num / den`` (Algorithm 1): ``floor(gamma)``
  trials of ``Bernoulli(exp(-1))`` (here: a geometric count of them, compared with
  ``floor(gamma)``), then for the fraction ``f = r / den`` the loop ``K = 1, 2, ...`` of
  ``Bernoulli(f / K)`` (a uniform integer below ``den K`` compared with ``r``) until a failure,
  accepting when ``K`` is odd;
- the discrete Laplace of scale ``t`` (Algorithm 2): ``U`` uniform in ``[0, t)`` kept with
  probability ``exp(-U / t)``, ``V`` a geometric count of ``Bernoulli(exp(-1))``, ``X = U + t V``,
  a sign, and ``-0`` rejected;
- the discrete Gaussian (Algorithm 3): ``Y`` discrete Laplace of scale ``t``, kept with
  probability ``exp(-(|Y| - sigma^2 / t)^2 / (2 sigma^2))``.

Algorithm 3 is exact for every ``t > 0`` (``t`` only sets the acceptance rate; the paper's
``floor(sigma) + 1`` is the default). With ``sigma^2 = p / q`` (a :class:`~fractions.Fraction`)
the acceptance exponent is ``(q t |Y| - p)^2 / (2 p q t^2)``; when ``q t`` divides ``p``
(:func:`sampling_variance` rounds a variance up so that it does) it is ``q (|Y| - a)^2 / (2 p)``
with ``a = p / (q t)``, whose numbers fit 64 bits for every ``sigma`` up to ``2^24``. Every
element runs through numpy int64 arithmetic; the few whose numbers could overflow (a tail of
probability far below ``2^-100``) take the same algorithm in Python integers. Nothing is
rounded through floating point.

Randomness: uniform 64-bit words from AES-256 in counter mode keyed with 32 bytes of
``os.urandom`` (a CSPRNG, as NIST's CTR_DRBG; numpy's own generators are not one) and turned
into exact uniform integers below ``n`` by rejection (``w >= 2^64 mod n``, then ``w mod n``).
:meth:`SecureBits.for_tests` keys it from a seed: reproducible, for tests only.
"""

from __future__ import annotations

import hashlib
import math
import os
from fractions import Fraction

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhive.common.errors import ConfigError

KEY_BYTES = 32
BATCH = 1 << 20  # samples per vectorised pass (memory stays O(batch))
MAX_SIGMA = 1 << 24  # the int64 fast path's bound (larger variances are refused)
_FAST_M = 1 << 30  # |m| below this: c m^2 fits int64 for c < 2^2 (checked where used)
_MAX_K = 100  # den K stays below 2^62 for den < 2^55


class SecureBits:
    """Uniform 64-bit words and exact uniform integers from AES-256-CTR (see the module)."""

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise ValueError(f"a key is {KEY_BYTES} bytes")
        self._stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def for_tests(cls, seed: int) -> SecureBits:
        """A reproducible stream (tests only: never for noise that protects anybody)."""
        return cls(hashlib.sha256(f"fedhive-test-seed:{seed}".encode()).digest())

    def words(self, n: int) -> np.ndarray:
        """``n`` uniform uint64 words."""
        raw = self._stream.update(bytes(8 * n))
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)

    def below(self, n: np.ndarray | int, size: int | None = None) -> np.ndarray:
        """Uniform integers in ``[0, n)`` (``n`` positive, below 2^63; an array or a scalar)."""
        if np.ndim(n) == 0:
            return self._below_scalar(int(n), int(size if size is not None else 1))
        bound = np.asarray(n, dtype=np.uint64)
        count = int(bound.size if size is None else size)
        bound = np.broadcast_to(bound, (count,))
        out = np.empty(count, dtype=np.int64)
        todo = np.arange(count)
        while todo.size:
            b = bound[todo]
            w = self.words(todo.size)
            floor = (np.uint64(0) - b) % b  # 2^64 mod b: below it the residues are biased
            ok = w >= floor
            out[todo[ok]] = (w[ok] % b[ok]).astype(np.int64)
            todo = todo[~ok]
        return out

    def _below_scalar(self, n: int, count: int) -> np.ndarray:
        if not 0 < n < (1 << 63):
            raise ValueError(f"bound {n} outside (0, 2^63)")
        b = np.uint64(n)
        floor = np.uint64((1 << 64) % n)
        w = self.words(count)
        ok = w >= floor
        out = (w % b).astype(np.int64)
        bad = np.flatnonzero(~ok)
        if bad.size:
            out[bad] = self._below_scalar(n, bad.size)
        return out

    def randbelow(self, n: int) -> int:
        """A uniform Python integer in ``[0, n)`` (any size)."""
        if n <= 0:
            raise ValueError("n must be positive")
        chunks = max(1, (n.bit_length() + 63) // 64 + 1)
        span = 1 << (64 * chunks)
        limit = span - span % n
        while True:
            value = 0
            for w in self.words(chunks).tolist():
                value = (value << 64) | int(w)
            if value < limit:
                return value % n


# ----------------------------------------------------------------------------- Bernoulli


def geometric_e(bits: SecureBits, n: int) -> np.ndarray:
    """Counts of successes of ``Bernoulli(exp(-1))`` before the first failure (``P[G >= k] =
    exp(-k)``), each trial by Algorithm 1 at ``gamma = 1``."""
    count = np.zeros(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        ok = _bern_exp_fraction(bits, np.ones(todo.size, np.int64), 1)
        count[todo[ok]] += 1
        todo = todo[ok]
    return count


def _bern_exp_fraction(bits: SecureBits, r: np.ndarray, den: int) -> np.ndarray:
    """``Bernoulli(exp(-r / den))`` for ``0 <= r <= den`` (Algorithm 1): ``K = 1, 2, ...``
    while ``Bernoulli(r / (den K))`` succeeds; true when the loop stops at an odd ``K``.

    The elements still in the loop all share ``K``: each pass draws below one bound, ``den K``.
    """
    out = np.zeros(r.size, dtype=bool)
    live = np.arange(r.size)
    rest = r
    k = 1
    if den == 1 and bool((r == 1).all()):  # gamma = 1: Bernoulli(1 / 1) always succeeds
        k = 2
    while live.size:
        hit = bits.below(den * k, live.size) < rest
        out[live[~hit]] = k % 2 == 1
        live, rest = live[hit], rest[hit]
        k += 1
        if live.size and k > _MAX_K:  # probability below 1 / 100!
            raise ArithmeticError("Bernoulli(exp(-gamma)) loop ran past its int64 bound")
    return out


def bernoulli_exp(bits: SecureBits, num: np.ndarray, den: int) -> np.ndarray:
    """``Bernoulli(exp(-num / den))`` elementwise (int64 ``num >= 0``, ``0 < den < 2^55``)."""
    whole, frac = np.divmod(num, den)
    out = np.ones(num.size, dtype=bool)
    live = np.flatnonzero(whole)  # floor(gamma) trials of Bernoulli(exp(-1)), all must succeed
    left = whole[live]
    while live.size:
        ok = _bern_exp_fraction(bits, np.ones(live.size, np.int64), 1)
        out[live[~ok]] = False
        left = left[ok] - 1
        live = live[ok]
        more = left > 0
        live, left = live[more], left[more]
    idx = np.flatnonzero(out)
    out[idx] = _bern_exp_fraction(bits, frac[idx], den)
    return out


def bernoulli_exp_exact(bits: SecureBits, gamma: Fraction) -> bool:
    """Algorithm 1 in Python integers (any size): the slow path for rare elements."""
    whole = math.floor(gamma)
    if int(geometric_e(bits, 1)[0]) < whole:
        return False
    r, den = gamma.numerator - whole * gamma.denominator, gamma.denominator
    k = 1
    while bits.randbelow(den * k) < r:
        k += 1
    return k % 2 == 1


# ----------------------------------------------------------------------------- samplers


def discrete_laplace(bits: SecureBits, n: int, t: int) -> np.ndarray:
    """``n`` samples with ``P[Y = y] proportional to exp(-|y| / t)`` (Algorithm 2, ``s = 1``)."""
    if not 1 <= t < (1 << 40):
        raise ValueError(f"discrete Laplace scale {t} outside [1, 2^40)")
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        u = bits.below(t, todo.size)
        kept = bernoulli_exp(bits, u, t)  # the rest start over (V and the sign only for these)
        todo, retry, u = todo[kept], todo[~kept], u[kept]
        m = todo.size
        x = u + t * geometric_e(bits, m)
        negative = (bits.words(m) & np.uint64(1)) == 1
        keep = ~(negative & (x == 0))
        out[todo[keep]] = np.where(negative, -x, x)[keep]
        todo = np.concatenate([retry, todo[~keep]])
    return out


def default_scale(variance: Fraction) -> int:
    """The paper's ``t = floor(sigma) + 1``."""
    return math.isqrt(variance.numerator // variance.denominator) + 1


def sampling_variance(variance: float | Fraction) -> Fraction:
    """The smallest integer ``s >= variance`` that is a multiple of ``t = floor(sqrt(s)) + 1``
    (so the sampler runs in 64-bit integers; the noise only grows, by less than ``2 sigma``)."""
    v = Fraction(variance)
    if v <= 0:
        raise ConfigError(f"a discrete Gaussian needs a positive variance, got {variance}")
    s = math.ceil(v)
    while True:
        t = math.isqrt(s) + 1
        s = -(-s // t) * t
        if math.isqrt(s) + 1 == t:
            return Fraction(s)
        # s crossed a square: t grew; round up again to a multiple of the new t


def discrete_gaussian(
    bits: SecureBits, n: int, variance: Fraction | int, *, scale: int | None = None
) -> np.ndarray:
    """``n`` exact samples of ``N_Z(0, variance)`` (int64), ``variance`` a positive rational.

    ``scale`` is Algorithm 3's ``t`` (default ``floor(sigma) + 1``). With ``variance / t`` an
    integer (see :func:`sampling_variance`) the whole sampler runs in int64.
    """
    var = Fraction(variance)
    if var <= 0:
        raise ConfigError(f"a discrete Gaussian needs a positive variance, got {variance}")
    if var > MAX_SIGMA * MAX_SIGMA:
        raise ConfigError(f"discrete Gaussian variance {float(var):.3g} above 2^48 (sigma 2^24)")
    t = default_scale(var) if scale is None else int(scale)
    if t < 1:
        raise ValueError("the scale t must be a positive integer")
    out = np.empty(n, dtype=np.int64)
    for lo in range(0, n, BATCH):
        hi = min(n, lo + BATCH)
        out[lo:hi] = _gaussian_batch(bits, hi - lo, var, t)
    return out


def _gaussian_batch(bits: SecureBits, n: int, var: Fraction, t: int) -> np.ndarray:
    p, q = var.numerator, var.denominator
    divisible = p % (q * t) == 0
    if divisible:  # gamma = q (|Y| - a)^2 / (2 p)
        a, c, alpha, den = p // (q * t), q, 1, 2 * p
    else:  # gamma = (q t |Y| - p)^2 / (2 p q t^2)
        a, c, alpha, den = p, 1, q * t, 2 * p * q * t * t
    fast = den < (1 << 55) and c < 4 and a < _FAST_M
    out = np.empty(n, dtype=np.int64)
    todo = np.arange(n)
    while todo.size:
        y = discrete_laplace(bits, todo.size, t)
        keep = np.zeros(todo.size, dtype=bool)
        mag = np.abs(y)
        # |m| = |alpha |Y| - a| < 2^30 and c < 4: c m^2 < 2^62 fits int64
        small = mag < (_FAST_M // alpha) if fast else np.zeros(y.size, dtype=bool)
        idx = np.flatnonzero(small)
        if idx.size:
            m = alpha * mag[idx] - a
            keep[idx] = bernoulli_exp(bits, c * m * m, den)
        for i in np.flatnonzero(~small).tolist():  # big numbers: Python integers, same algorithm
            mi = alpha * int(mag[i]) - a
            keep[i] = bernoulli_exp_exact(bits, Fraction(c * mi * mi, den))
        out[todo[keep]] = y[keep]
        todo = todo[~keep]
    return out


def pmf(variance: Fraction | float, support: np.ndarray) -> np.ndarray:
    """The exact probabilities of ``N_Z(0, variance)`` at ``support`` (float64; tests)."""
    v = float(variance)
    width = int(40 * math.sqrt(v)) + 40
    xs = np.arange(-width, width + 1, dtype=np.float64)
    norm = float(np.exp(-(xs * xs) / (2 * v)).sum())
    s = np.asarray(support, dtype=np.float64)
    return np.exp(-(s * s) / (2 * v)) / norm


def variance_of(variance: Fraction | float) -> float:
    """The true variance of ``N_Z(0, variance)`` (slightly below ``variance`` for small sigma)."""
    v = float(variance)
    width = int(40 * math.sqrt(v)) + 40
    xs = np.arange(-width, width + 1, dtype=np.float64)
    w = np.exp(-(xs * xs) / (2 * v))
    return float((w * xs * xs).sum() / w.sum())
