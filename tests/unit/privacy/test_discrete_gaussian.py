"""The exact discrete Gaussian sampler against its exact pmf (fixed seeds, stated error rates).

Every statistical assertion below fails with probability at most 1e-4 under a correct sampler
(a chi-square p-value below 1e-4, or a deviation beyond 3.9 standard errors); the seeds are
fixed, so a run is reproducible.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import chi2

from fedhive.common.errors import ConfigError
from fedhive.common.privacy.discrete_gaussian import (
    SecureBits,
    bernoulli_exp,
    bernoulli_exp_exact,
    discrete_gaussian,
    discrete_laplace,
    pmf,
    sampling_variance,
    variance_of,
)

ALPHA = 1e-4  # false-failure rate of each statistical check
Z = 3.9  # two-sided normal quantile for ALPHA


def chi_square_p(samples: np.ndarray, probs_of: np.ndarray, support: np.ndarray) -> float:
    """p-value of a chi-square goodness-of-fit test; cells with expected count < 5 pooled into
    the two tails."""
    n = samples.size
    expected = probs_of * n
    keep = expected >= 5
    lo, hi = support[keep].min(), support[keep].max()
    inner = (support >= lo) & (support <= hi)
    counts = np.array([(samples == x).sum() for x in support[inner]], dtype=np.float64)
    exp_in = expected[inner]
    tails_obs = np.array([(samples < lo).sum(), (samples > hi).sum()], dtype=np.float64)
    tails_exp = np.array([expected[support < lo].sum(), expected[support > hi].sum()]) + 1e-300
    obs = np.concatenate([counts, tails_obs])
    exp = np.concatenate([exp_in, tails_exp])
    used = exp >= 1e-12
    stat = float((((obs - exp) ** 2) / exp)[used].sum())
    return float(chi2.sf(stat, df=int(used.sum()) - 1))


@pytest.mark.parametrize(
    ("variance", "seed"),
    [(Fraction(9, 2), 1), (Fraction(1, 3), 2), (Fraction(20), 3), (sampling_variance(400), 4)],
)
def test_samples_fit_the_exact_pmf(variance: Fraction, seed: int) -> None:
    # Prepare: a reproducible stream and the support that holds all but ~1e-30 of the mass
    bits = SecureBits.for_tests(seed)
    width = int(12 * math.sqrt(float(variance))) + 3
    support = np.arange(-width, width + 1)

    # Execute
    samples = discrete_gaussian(bits, 200_000, variance)

    # Assert: the chi-square test does not reject, and the variance matches the exact one
    assert chi_square_p(samples, pmf(variance, support), support) > ALPHA
    true_var = variance_of(variance)
    fourth = float((pmf(variance, support) * support.astype(np.float64) ** 4).sum())
    se = math.sqrt((fourth - true_var**2) / samples.size)
    assert abs(float(np.mean(samples.astype(np.float64) ** 2)) - true_var) < Z * se


def test_a_large_variance_is_sampled_in_64_bits_with_the_right_spread() -> None:
    # Prepare: sigma ~ 57000, the size of a node's share in a distributed DP round
    variance = sampling_variance(3.3e9)
    bits = SecureBits.for_tests(5)

    # Execute
    samples = discrete_gaussian(bits, 400_000, variance).astype(np.float64)

    # Assert: mean 0 and variance sigma^2 within 3.9 standard errors (Gaussian moments)
    v = float(variance)
    assert abs(samples.mean()) < Z * math.sqrt(v / samples.size)
    assert abs(samples.var() - v) < Z * v * math.sqrt(2 / samples.size)


def test_the_big_integer_path_agrees_with_the_pmf() -> None:
    # Prepare: a variance whose numbers do not fit the int64 path (numerator above 2^30)
    variance = Fraction(2**31 + 11, 2**28)  # sigma^2 ~ 8.00000004
    bits = SecureBits.for_tests(6)
    support = np.arange(-40, 41)

    # Execute
    samples = discrete_gaussian(bits, 6_000, variance)

    # Assert
    assert chi_square_p(samples, pmf(variance, support), support) > ALPHA


def test_bernoulli_exp_matches_exp_minus_gamma() -> None:
    # Prepare: gamma = 7/4 (an integer part and a fraction), vectorised and exact paths
    bits = SecureBits.for_tests(7)
    n = 200_000
    p = math.exp(-7 / 4)
    se = math.sqrt(p * (1 - p) / n)

    # Execute
    fast = bernoulli_exp(bits, np.full(n, 7, np.int64), 4)
    exact = [bernoulli_exp_exact(bits, Fraction(7, 4)) for _ in range(5_000)]

    # Assert
    assert abs(fast.mean() - p) < Z * se
    assert abs(np.mean(exact) - p) < Z * math.sqrt(p * (1 - p) / 5_000)


def test_discrete_laplace_fits_its_pmf() -> None:
    # Prepare
    bits = SecureBits.for_tests(8)
    t = 3
    support = np.arange(-60, 61)
    weights = np.exp(-np.abs(support) / t)

    # Execute
    samples = discrete_laplace(bits, 200_000, t)

    # Assert
    assert chi_square_p(samples, weights / weights.sum(), support) > ALPHA


def test_uniform_integers_below_a_bound_are_uniform() -> None:
    # Prepare: a bound that is not a power of two (rejection matters in principle)
    bits = SecureBits.for_tests(9)

    # Execute
    draws = bits.below(np.full(300_000, 7, dtype=np.int64))
    scalar = bits.below(7, 300_000)

    # Assert
    for d in (draws, scalar):
        counts = np.bincount(d, minlength=7)
        assert d.min() >= 0 and d.max() < 7
        stat = float((((counts - d.size / 7) ** 2) / (d.size / 7)).sum())
        assert chi2.sf(stat, df=6) > ALPHA


def test_the_default_source_is_the_operating_system_and_differs_per_stream() -> None:
    # Prepare / Execute: two unseeded streams
    a, b = SecureBits().words(4), SecureBits().words(4)

    # Assert: keyed from os.urandom, so (with overwhelming probability) different
    assert not np.array_equal(a, b)


def test_sampling_variance_rounds_up_to_a_multiple_of_its_scale() -> None:
    for v in (1, 2.5, 99, 10_001, 3.3e9):
        s = sampling_variance(v)
        t = math.isqrt(int(s)) + 1
        assert s >= v and s.denominator == 1 and int(s) % t == 0
        assert s - Fraction(v) < 2 * t + 1


def test_a_nonpositive_variance_is_refused() -> None:
    with pytest.raises(ConfigError, match="positive variance"):
        discrete_gaussian(SecureBits.for_tests(0), 3, 0)
