"""Weighted stochastic quantization and the 32-bit overflow bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import ConfigError, InvalidUpdateError
from fedhive.common.secagg.quantize import SUB_BLOCK, QuantConfig, dequantize, quantize


@given(
    weights=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    bits=st.integers(2, 16),
    clip=st.floats(0.1, 10.0),
    seed=st.integers(0, 1000),
)
def test_weighted_mean_within_the_rounding_bound(
    weights: list[int], bits: int, clip: float, seed: int
) -> None:
    # Prepare
    cfg = QuantConfig(clip=clip, bits=bits, max_weight=50)
    rng = np.random.default_rng(seed)
    values = [rng.uniform(-2 * clip, 2 * clip, 64) for _ in weights]
    # Execute
    total = sum(
        quantize(v, w, cfg, rng).astype(np.uint64) for v, w in zip(values, weights, strict=True)
    )
    mean = dequantize(np.asarray(total), sum(weights), cfg)
    # Assert: each node rounds once (< 1 step), so the mean is off by < nodes * step / W.
    exact = sum(w * np.clip(v, -clip, clip) for v, w in zip(values, weights, strict=True)) / sum(
        weights
    )
    bound = len(weights) * cfg.step / sum(weights) + 1e-9 * clip
    assert np.max(np.abs(mean - exact)) <= bound


def test_quantized_words_stay_in_range() -> None:
    cfg = QuantConfig(clip=1.0, bits=8, max_weight=10)
    q = quantize(np.array([-5.0, -1.0, 0.0, 1.0, 5.0]), 10, cfg, np.random.default_rng(0))
    assert q.dtype == np.uint32
    assert q[0] == 0 and q[1] == 0 and q[3] == 10 * 255 and q[4] == 10 * 255


def test_stochastic_rounding_is_unbiased() -> None:
    # Prepare: a value a third of the way between two levels.
    cfg = QuantConfig(clip=1.0, bits=1, max_weight=1)  # levels -1 and +1
    x = np.full(200_000, -1.0 + 2.0 / 3.0)
    # Execute
    q = quantize(x, 1, cfg, np.random.default_rng(1))
    # Assert: 1/3 of them round up; 200k draws put the mean within 0.01 by a wide margin.
    assert abs(q.mean() - 1 / 3) < 0.01


def test_overflowing_configuration_is_refused_with_the_bound() -> None:
    cfg = QuantConfig(clip=1.0, bits=16, max_weight=1024)
    cfg.check(64)  # 64 x 1024 x 65535 < 2^32
    with pytest.raises(ConfigError, match=r"nodes \(65\) x max_weight \(1024\).*>= 2\^32"):
        cfg.check(65)


@pytest.mark.parametrize("weight", [0, 11])
def test_weight_outside_the_configuration_is_refused(weight: int) -> None:
    cfg = QuantConfig(max_weight=10)
    with pytest.raises(ConfigError, match="max_weight=10"):
        quantize(np.zeros(3), weight, cfg, np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs", [{"clip": 0.0}, {"clip": float("inf")}, {"bits": 0}, {"bits": 32}, {"max_weight": 0}]
)
def test_bad_quantization_settings_are_refused(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        QuantConfig(**kwargs)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("bad", [[float("nan")], [float("inf")], [float("inf"), float("-inf")]])
def test_non_finite_values_are_refused(bad: list[float], dtype: type) -> None:
    # Prepare: the bad values deep in the last of several sub-blocks
    x = np.zeros(3 * SUB_BLOCK + 7, dtype=dtype)
    x[-len(bad) :] = bad
    # Execute / Assert
    with pytest.raises(InvalidUpdateError, match="non-finite"):
        quantize(x, 1, QuantConfig(), np.random.default_rng(0))


def test_rounding_is_unbiased_at_the_largest_weight_over_many_sub_blocks() -> None:
    # Prepare: float32 input at max_weight, so w (x + clip) / step is near 2^26 where a float32
    # could not hold the fraction; the fraction is 0.3 of a level at every element
    cfg = QuantConfig(clip=64.0, bits=16, max_weight=1024)
    level = 1234.3
    x = np.full(10 * SUB_BLOCK + 3, level * cfg.step / 1024 - 64.0, dtype=np.float32)
    exact = 1024 * (float(x[0]) + 64.0) / cfg.step
    # Execute
    q = quantize(x, 1024, cfg, np.random.default_rng(3)).astype(np.float64)
    # Assert: only the two neighbouring words, in the right proportion (5 sigma of 327k draws)
    assert set(np.unique(q)) == {np.floor(exact), np.floor(exact) + 1}
    frac = exact - np.floor(exact)
    assert abs((q.mean() - np.floor(exact)) - frac) < 5 * np.sqrt(frac * (1 - frac) / q.size)


@given(
    n=st.integers(1, 3 * SUB_BLOCK // 2),
    weight=st.integers(1, 1024),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantizing_into_a_mask_adds_exactly_the_quantized_words(
    n: int, weight: int, seed: int
) -> None:
    # Prepare: the same values and rounding randomness; a random uint32 "mask" to add to
    cfg = QuantConfig(clip=4.0, bits=16, max_weight=1024)
    rng = np.random.default_rng(seed)
    values = rng.normal(0, 3, n).astype(np.float32)
    mask = rng.integers(0, 2**32, n, dtype=np.uint32)
    # Execute
    words = quantize(values, weight, cfg, np.random.default_rng(seed))
    into = quantize(values, weight, cfg, np.random.default_rng(seed), add_to=mask.copy())
    # Assert: mod 2^32, bit for bit
    assert np.array_equal(into, mask + words)


def test_quantizing_into_an_array_of_the_wrong_shape_is_refused() -> None:
    cfg = QuantConfig()
    with pytest.raises(ValueError, match="flat uint32 array of 3 words"):
        quantize(np.zeros(3), 1, cfg, np.random.default_rng(0), add_to=np.zeros(4, np.uint32))
