"""Gaussian noise from a cryptographically secure source.

Why not ``numpy.random``: its bit generators (PCG64, MT19937) are statistical, not cryptographic;
PCG64's state can be recovered from its outputs (Bouillaguet et al. 2020), and a noise sample
an observer can predict gives no privacy. Here the uniform bits are an AES-256-CTR keystream under
a fresh 256-bit key from ``os.urandom`` (the kernel's CSPRNG): as long as AES is a pseudorandom
permutation, the stream cannot be told from true random bits, nor predicted from any part of it.
One key per noise source; a counter block never repeats under it (one stream, read forward).
A fixed key exists for tests only (:meth:`GaussianNoise.for_tests`).

Normals are drawn by Box-Muller from 53-bit uniforms in (0, 1]. The floating-point caveats of
such samplers (Mironov 2012: the set of doubles a noised value can take depends on the value
itself) apply; see docs/privacy.md.
"""

from __future__ import annotations

import hashlib
import math
import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

KEY_BYTES = 32  # AES-256
MANTISSA_BITS = 53  # a double's precision: uniforms on the grid k / 2^53
SLICE = 2**18  # values drawn per call at most: temporaries stay this size


class GaussianNoise:
    """Independent standard normal samples, drawn from a keyed AES-256-CTR keystream."""

    def __init__(self, key: bytes | None = None) -> None:
        key = os.urandom(KEY_BYTES) if key is None else key
        if len(key) != KEY_BYTES:
            raise ValueError(f"a noise key has {KEY_BYTES} bytes, not {len(key)}")
        self._stream: CipherContext = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()

    @classmethod
    def for_tests(cls, seed: int) -> GaussianNoise:
        """A reproducible source: for tests only (its key is public)."""
        return cls(hashlib.sha256(f"fedhive test noise {seed}".encode()).digest())

    def _uniform(self, n: int) -> np.ndarray:
        """``n`` uniforms in (0, 1] (never 0: Box-Muller takes their log)."""
        words = np.frombuffer(self._stream.update(bytes(8 * n)), dtype="<u8")
        return ((words >> np.uint64(64 - MANTISSA_BITS)).astype(np.float64) + 1.0) * (
            2.0**-MANTISSA_BITS
        )

    def standard_normal(self, n: int) -> np.ndarray:
        """``n`` samples of N(0, 1), float64 (drawn in slices of at most ``SLICE``)."""
        out = np.empty(n, dtype=np.float64)
        for lo in range(0, n, SLICE):
            hi = min(n, lo + SLICE)
            half = (hi - lo + 1) // 2
            radius = np.sqrt(-2.0 * np.log(self._uniform(half)))
            angle = (2.0 * math.pi) * self._uniform(half)
            pair = np.empty(2 * half, dtype=np.float64)
            pair[0::2] = radius * np.cos(angle)
            pair[1::2] = radius * np.sin(angle)
            out[lo:hi] = pair[: hi - lo]
        return out

    def normal(self, std: float) -> float:
        """One sample of N(0, std^2)."""
        return float(std * self.standard_normal(1)[0])
