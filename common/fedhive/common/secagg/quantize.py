"""Weighted stochastic quantization into Z_2^32, and the overflow bound.

A node with ``w`` examples clips each value ``x`` to ``[-clip, clip]``, multiplies by ``w`` and
rounds ``w (x + clip) / step`` stochastically (unbiased) to an integer in ``[0, w L]``, where
``L = 2^bits - 1`` and ``step = 2 clip / L``. Its example count ``w`` travels as one extra masked
word. The coordinator unmasks the sums ``S = sum_i q_i`` and ``W = sum_i w_i`` and divides:
``mean = S step / W - clip``, the example-weighted mean of the clipped values, within ``step / 2``
per node of rounding noise (zero in expectation).

**Overflow bound.** ``S <= W L <= nodes x max_weight x L`` must stay below ``2^32`` or the sum
wraps around silently. :meth:`QuantConfig.check` refuses any configuration where it can, and a node
refuses to send a weight above ``max_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedhive.common.errors import ConfigError, InvalidUpdateError

MODULUS = 1 << 32


@dataclass(frozen=True)
class QuantConfig:
    clip: float = 4.0
    bits: int = 16
    max_weight: int = 1024

    def __post_init__(self) -> None:
        if not (self.clip > 0 and np.isfinite(self.clip)):
            raise ConfigError(f"secagg clip range must be positive and finite, got {self.clip}")
        if not 1 <= self.bits <= 31:
            raise ConfigError(f"secagg bit width must be in [1, 31], got {self.bits}")
        if self.max_weight < 1:
            raise ConfigError(f"secagg max_weight must be >= 1, got {self.max_weight}")

    @property
    def levels(self) -> int:
        """``L = 2^bits - 1``: steps across ``[-clip, clip]`` at weight 1."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        return 2.0 * self.clip / self.levels

    def check(self, nodes: int) -> None:
        """Refuse a configuration whose unmasked sum could overflow 32 bits."""
        worst = nodes * self.max_weight * self.levels
        if worst >= MODULUS:
            raise ConfigError(
                f"secure aggregation can overflow: nodes ({nodes}) x max_weight "
                f"({self.max_weight}) x (2^bits - 1) ({self.levels}) = {worst} >= 2^32; "
                f"lower bits, max_weight or the number of nodes per round"
            )

    def check_weight(self, weight: int) -> None:
        if not 1 <= weight <= self.max_weight:
            raise ConfigError(
                f"example count {weight} outside [1, max_weight={self.max_weight}] of the "
                f"secure-aggregation configuration"
            )


SUB_BLOCK = 1 << 15  # elements per pass: the float64 scratch stays in the CPU cache


def quantize(
    values: np.ndarray,
    weight: int,
    cfg: QuantConfig,
    rng: np.random.Generator,
    *,
    add_to: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted stochastic quantization of float ``values`` into uint32 words in ``[0, w L]``;
    with ``add_to`` (uint32, as long as ``values``) the words are added to it, mod 2^32, in
    place (a node's precomputed mask: no array of quantized words is made) and it is returned.

    ``floor(y + u)`` with ``u`` uniform in ``[0, 1)`` rounds ``y`` up with probability
    ``frac(y)``: unbiased. ``u = r / 2^32`` for ``r`` the next 32-bit word of an AES-256-CTR
    keystream keyed from ``rng`` (a fresh key per call; AES-NI makes it ~4x cheaper than numpy's
    generators here). The probability of rounding up is ``frac(y)`` up to the resolution of
    ``u`` (``2^-32``) and the float64 rounding of ``y + u`` (half an ulp of ``y``: at most
    ``2^-22`` for ``y <= w L < 2^32``, ``2^-28`` at the defaults' ``w L < 2^26``), a bias far
    below the rounding noise of one grid step. The work, the finiteness check included, runs
    over cache-sized sub-blocks.
    """
    cfg.check_weight(weight)
    flat = np.asarray(values).reshape(-1)
    n = flat.size
    if add_to is not None and (
        add_to.dtype != np.uint32 or add_to.shape != (n,) or not add_to.flags.writeable
    ):
        raise ValueError(f"add_to must be a writable flat uint32 array of {n} words")
    out = np.empty(n, dtype=np.uint32) if add_to is None else add_to
    sub = max(min(n, SUB_BLOCK), 1)
    scratch = np.empty(sub, dtype=np.float64)
    uniform = np.empty(sub, dtype=np.float64)
    words = np.empty(sub + 4, dtype=np.uint32)  # update_into wants a block of slack
    quantized = np.empty(sub, dtype=np.uint32) if add_to is not None else None
    zeros = memoryview(bytes(4 * sub))
    stream = Cipher(algorithms.AES(rng.bytes(32)), modes.CTR(bytes(16))).encryptor()
    scale = weight / cfg.step
    top = np.uint32(weight * cfg.levels)
    for i in range(0, n, sub):
        m = min(sub, n - i)
        x, y, u = flat[i : i + m], scratch[:m], uniform[:m]
        if not np.isfinite(x).all():
            raise InvalidUpdateError("cannot quantize non-finite values (NaN or inf)")
        np.clip(x, -cfg.clip, cfg.clip, out=y)
        y += cfg.clip
        y *= scale
        stream.update_into(zeros[: 4 * m], words.view(np.uint8).data)
        np.multiply(words[:m], 2.0**-32, out=u)
        y += u
        np.floor(y, out=y)
        target = out[i : i + m] if quantized is None else quantized[:m]
        target[...] = y  # integers below 2^32 + 1: exact
        np.minimum(target, top, out=target)  # float rounding of w (clip + clip) / step
        if quantized is not None:
            np.add(out[i : i + m], target, out=out[i : i + m])
    return out


def dequantize(words: np.ndarray, total_weight: int, cfg: QuantConfig) -> np.ndarray:
    """The weighted mean (float64) from unmasked sums ``words`` and the summed weight."""
    if total_weight <= 0:
        raise ValueError("the summed weight must be positive")
    out = words.astype(np.float64)
    out *= cfg.step / total_weight
    out -= cfg.clip
    return out
