"""Mask expansion: chunks of the stream without the prefix, wrap-around arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.secagg import prg

KEY = bytes(range(32))


@given(start=st.integers(0, 5000), length=st.integers(0, 300))
def test_any_range_equals_the_slice_of_the_whole_stream(start: int, length: int) -> None:
    whole = prg.mask_words(KEY, 0, 5300)
    assert np.array_equal(prg.mask_words(KEY, start, start + length), whole[start : start + length])


def test_add_then_subtract_restores_the_words_mod_2_32() -> None:
    # Prepare: words near the top of the range, so adding wraps around.
    words = np.full(100, 0xFFFFFFFF, dtype=np.uint32)
    original = words.copy()
    # Execute
    prg.add_mask(words, KEY, 40)
    masked = words.copy()
    prg.add_mask(words, KEY, 40, subtract=True)
    # Assert
    assert not np.array_equal(masked, original)
    expected = (original.astype(np.uint64) + prg.mask_words(KEY, 40, 140)) % (1 << 32)
    assert np.array_equal(masked, expected.astype(np.uint32))
    assert np.array_equal(words, original)


def test_different_keys_give_different_streams() -> None:
    other = bytes([1]) + KEY[1:]
    assert not np.array_equal(prg.mask_words(KEY, 0, 64), prg.mask_words(other, 0, 64))


@pytest.mark.parametrize("key, start, stop", [(bytes(16), 0, 1), (KEY, 5, 4), (KEY, -1, 3)])
def test_bad_arguments_are_refused(key: bytes, start: int, stop: int) -> None:
    with pytest.raises(ValueError):
        prg.mask_words(key, start, stop)


@pytest.mark.parametrize("start", [0, 3, prg.SUB_WORDS - 1])
def test_several_masks_in_one_pass_equal_the_masks_one_by_one(start: int) -> None:
    # Prepare: three keys, one subtracted, over more words than one sub-block
    keys = [(bytes([i]) * 32, i == 1) for i in range(3)]
    n = 2 * prg.SUB_WORDS + 7
    words = np.arange(n, dtype=np.uint32) * np.uint32(2654435761)
    expected = words.astype(np.int64)
    for key, subtract in keys:
        mask = prg.mask_words(key, start, start + n).astype(np.int64)
        expected = expected - mask if subtract else expected + mask
    # Execute
    prg.add_masks(words, keys, start)
    # Assert
    assert np.array_equal(words, (expected % (1 << 32)).astype(np.uint32))
