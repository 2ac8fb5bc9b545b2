"""t-of-m Shamir secret sharing over GF(p), p = 2^130 - 5, vectorised with numpy object arrays.

A 32-byte secret is split into two 128-bit field elements (big-endian halves, each < 2^128 < p);
both are shared with one polynomial evaluation pass over all holders at once (Horner over object
arrays of Python ints: no per-byte Python loop). A share is ``x`` (the holder's 1-based index)
and one y per element; encoded as ``x: u32 || y_0: 17 bytes || y_1: 17 bytes``.

Reconstruction takes any ``t`` shares with distinct x (Lagrange at 0). With fewer than ``t``
shares the secret is information-theoretically hidden: :func:`combine` refuses, and interpolating
``t - 1`` shares anyway yields an unrelated value (what the tests check).
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedhive.common.errors import SecAggAbortedError, SecAggAuthError

PRIME = (1 << 130) - 5
ELEMENT_BYTES = 16  # secret bytes per field element
Y_BYTES = 17  # encoded size of one field element
SECRET_BYTES = 32
ELEMENTS = SECRET_BYTES // ELEMENT_BYTES
SHARE_BYTES = 4 + ELEMENTS * Y_BYTES


@dataclass(frozen=True)
class Share:
    x: int
    y: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return struct.pack(">I", self.x) + b"".join(v.to_bytes(Y_BYTES, "big") for v in self.y)

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        if len(data) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
        (x,) = struct.unpack(">I", data[:4])
        ys = tuple(
            int.from_bytes(data[4 + i * Y_BYTES : 4 + (i + 1) * Y_BYTES], "big")
            for i in range(ELEMENTS)
        )
        if x == 0 or any(y >= PRIME for y in ys):
            raise ValueError("share out of range")
        return cls(x, ys)


def _elements(secret: bytes) -> list[int]:
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes")
    return [
        int.from_bytes(secret[i : i + ELEMENT_BYTES], "big")
        for i in range(0, SECRET_BYTES, ELEMENT_BYTES)
    ]


def split(
    secret: bytes, xs: Sequence[int], t: int, *, coefficients: Sequence[int] = ()
) -> list[Share]:
    """Shares of ``secret`` for holders ``xs`` (distinct, >= 1), any ``t`` of which recover it.

    ``coefficients`` (``(t - 1) * 2`` field elements) fix the random polynomial: known-answer tests
    only; by default they come from :mod:`secrets`.
    """
    if not 1 <= t <= len(xs):
        raise ValueError(f"threshold t={t} must be in [1, {len(xs)}]")
    if len(set(xs)) != len(xs) or min(xs) < 1 or max(xs) >= PRIME:
        raise ValueError("holder indices must be distinct and in [1, p)")
    count = (t - 1) * ELEMENTS
    coef = list(coefficients) or [secrets.randbelow(PRIME) for _ in range(count)]
    if len(coef) != count or any(not 0 <= c < PRIME for c in coef):
        raise ValueError(f"need {count} coefficients in [0, p)")
    # poly[d, e]: coefficient of x^d for element e; poly[0] is the secret.
    poly = np.empty((t, ELEMENTS), dtype=object)
    poly[0] = _elements(secret)
    if t > 1:
        poly[1:] = np.array(coef, dtype=object).reshape(t - 1, ELEMENTS)
    x = np.array(list(xs), dtype=object)[:, None]
    acc = np.zeros((len(xs), ELEMENTS), dtype=object) + poly[t - 1]
    for d in range(t - 2, -1, -1):
        acc = (acc * x + poly[d]) % PRIME
    return [Share(int(xi), tuple(int(v) for v in row)) for xi, row in zip(xs, acc, strict=True)]


def interpolate(shares: Sequence[Share]) -> list[int]:
    """Lagrange interpolation at 0 of all given shares (no threshold check: see :func:`combine`)."""
    xs = [s.x for s in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share index")
    lam = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * xm % PRIME
                den = den * (xm - xj) % PRIME
        lam.append(num * pow(den, -1, PRIME) % PRIME)
    ys = np.array([s.y for s in shares], dtype=object)
    total = (np.array(lam, dtype=object)[:, None] * ys).sum(axis=0) % PRIME
    return [int(v) for v in total]


def combine(shares: Sequence[Share], t: int, *, owner: str = "?") -> bytes:
    """The secret from at least ``t`` shares (the first ``t`` are used).

    Fewer than ``t`` shares: :class:`SecAggAbortedError`. A result that is not a valid secret
    (an element >= 2^128: some share was wrong): :class:`SecAggAuthError`.
    """
    if len(shares) < t:
        raise SecAggAbortedError(
            f"only {len(shares)} shares of node {owner!r}'s secret, {t} needed", node=owner
        )
    values = interpolate(shares[:t])
    if any(v >> (8 * ELEMENT_BYTES) for v in values):
        raise SecAggAuthError(f"shares of node {owner!r}'s secret are inconsistent", node=owner)
    return b"".join(v.to_bytes(ELEMENT_BYTES, "big") for v in values)
