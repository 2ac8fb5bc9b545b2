"""Masks: a ChaCha20 keystream from a full 256-bit secret, straight into uint32 words.

Word ``i`` of the mask of secret ``key`` is the little-endian uint32 at byte ``4 i`` of the
ChaCha20 keystream (RFC 7539 block function as OpenSSL implements it: 16-byte IV = 32-bit
little-endian block counter || 96-bit nonce, here all zero: every key is used for one mask only).
A block is 64 bytes = 16 words, so the mask of elements ``[start, stop)`` starts at block
``start // 16``: any chunk is generated without its prefix. Arithmetic is in Z_2^32, with numpy's
wrap-around.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

WORDS_PER_BLOCK = 16
BLOCK_BYTES = 64
MAX_WORDS = (1 << 32) * WORDS_PER_BLOCK  # the 32-bit block counter: 2^36 words (256 GiB)
_NONCE = bytes(12)

_ZEROS = memoryview(bytes(0))


def _zeros(n: int) -> memoryview:
    global _ZEROS
    if len(_ZEROS) < n:
        _ZEROS = memoryview(bytes(max(n, 1 << 20)))
    return _ZEROS[:n]


def mask_words(key: bytes, start: int, stop: int) -> np.ndarray:
    """The mask words ``[start, stop)`` of ``key`` (32 bytes) as a new uint32 array."""
    if len(key) != 32:
        raise ValueError("a mask key is 32 bytes")
    if not 0 <= start <= stop <= MAX_WORDS:
        raise ValueError(f"mask range [{start}, {stop}) outside [0, {MAX_WORDS})")
    first_block = start // WORDS_PER_BLOCK
    skip = start - first_block * WORDS_PER_BLOCK
    words = stop - start + skip
    nbytes = words * 4
    out = np.empty(words + WORDS_PER_BLOCK, dtype=np.uint32)  # update_into wants slack
    iv = first_block.to_bytes(4, "little") + _NONCE
    enc = Cipher(algorithms.ChaCha20(key, iv), mode=None).encryptor()
    enc.update_into(_zeros(nbytes), out.view(np.uint8).data)
    return out[skip:words]


def add_mask(target: np.ndarray, key: bytes, start: int, *, subtract: bool = False) -> None:
    """``target += mask[start : start + len(target)]`` (or ``-=``), in place, mod 2^32."""
    mask = mask_words(key, start, start + target.size)
    if subtract:
        np.subtract(target, mask, out=target)
    else:
        np.add(target, mask, out=target)
