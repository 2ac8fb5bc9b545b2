"""Masks: an AES-256-CTR keystream from a full 256-bit secret, straight into uint32 words.

Word ``i`` of the mask of secret ``key`` is the little-endian uint32 at byte ``4 i`` of the
AES-256-CTR keystream (NIST SP 800-38A counter mode, the counter block a 128-bit big-endian
integer starting at 0: every key is used for one mask only). A counter block is 16 bytes = 4
words, so the mask of elements ``[start, stop)`` starts at counter ``start // 4``: any chunk is
generated without its prefix. Arithmetic is in Z_2^32, with numpy's wrap-around.

AES-CTR rather than ChaCha20 because AES-NI makes it the faster keystream on the CPUs nodes run
on (about 1.5x here), and :func:`add_masks` applies all of a node's masks sub-block by sub-block,
so the words being masked stay in the CPU cache while each keystream is added.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

WORDS_PER_BLOCK = 4
BLOCK_BYTES = 16
MAX_WORDS = 1 << 40  # far below the 2^128 counter blocks; no model comes near it
SUB_WORDS = 1 << 15  # words per pass of add_masks (128 KiB of scratch: stays in cache)

_ZEROS = memoryview(bytes(0))


def _zeros(n: int) -> memoryview:
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = memoryview(bytes(max(n, 4 * SUB_WORDS)))
    return _ZEROS[:n]


def _check(key: bytes, start: int, stop: int) -> None:
    if len(key) != 32:
        raise ValueError("a mask key is 32 bytes")
    if not 0 <= start <= stop <= MAX_WORDS:
        raise ValueError(f"mask range [{start}, {stop}) outside [0, {MAX_WORDS})")


def _stream_at(key: bytes, start: int) -> CipherContext:
    """An AES-256-CTR encryptor positioned at mask word ``start``."""
    first_block, skip = divmod(start, WORDS_PER_BLOCK)
    enc = Cipher(algorithms.AES(key), modes.CTR(first_block.to_bytes(16, "big"))).encryptor()
    if skip:
        enc.update(bytes(4 * skip))  # CTR keeps the partial block: the stream goes on at start
    return enc


def keystream(key: bytes, counter: bytes, nbytes: int) -> bytes:
    """Raw AES-256-CTR keystream from a 16-byte initial counter block (known-answer tests)."""
    enc = Cipher(algorithms.AES(key), modes.CTR(counter)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def mask_words(key: bytes, start: int, stop: int) -> np.ndarray:
    """The mask words ``[start, stop)`` of ``key`` (32 bytes) as a new uint32 array."""
    _check(key, start, stop)
    n = stop - start
    out = np.empty(n + WORDS_PER_BLOCK, dtype=np.uint32)  # update_into wants a block of slack
    if n:
        _stream_at(key, start).update_into(_zeros(4 * n), out.view(np.uint8).data)
    return out[:n]


def add_masks(target: np.ndarray, masks: Sequence[tuple[bytes, bool]], start: int) -> None:
    """For each ``(key, subtract)``: ``target -= mask`` if ``subtract`` else ``target += mask``,
    over words ``[start, start + len(target))``, in place, mod 2^32.

    One pass over ``target`` in cache-sized sub-blocks, each mask's stream continuing where the
    previous sub-block stopped."""
    if target.dtype != np.uint32 or target.ndim != 1:
        raise ValueError("masks apply to a flat uint32 array")
    n = int(target.size)
    for key, _ in masks:
        _check(key, start, start + n)
    if n == 0 or not masks:
        return
    streams = [(_stream_at(key, start), subtract) for key, subtract in masks]
    sub = min(n, SUB_WORDS)
    scratch = np.empty(sub + WORDS_PER_BLOCK, dtype=np.uint32)
    out = scratch.view(np.uint8).data
    for i in range(0, n, sub):
        m = min(sub, n - i)
        part, mask, zeros = target[i : i + m], scratch[:m], _zeros(4 * m)
        for enc, subtract in streams:
            enc.update_into(zeros, out)
            if subtract:
                np.subtract(part, mask, out=part)
            else:
                np.add(part, mask, out=part)


def add_mask(target: np.ndarray, key: bytes, start: int, *, subtract: bool = False) -> None:
    """``target += mask[start : start + len(target)]`` (or ``-=``), in place, mod 2^32."""
    add_masks(target, [(key, subtract)], start)
