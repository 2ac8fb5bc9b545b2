"""Shamir t-of-m over GF(2^130 - 5): any t shares recover, t - 1 reveal nothing usable."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import SecAggAbortedError, SecAggAuthError
from fedhive.common.secagg import shamir


@given(
    secret=st.binary(min_size=32, max_size=32),
    m=st.integers(1, 12),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret: bytes, m: int, data: st.DataObject) -> None:
    # Prepare
    t = data.draw(st.integers(1, m), label="t")
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=m, max_size=m, unique=True))
    shares = shamir.split(secret, xs, t)
    picked = data.draw(st.permutations(shares)).copy()[:t]
    # Execute
    recovered = shamir.combine([shamir.Share.from_bytes(s.to_bytes()) for s in picked], t)
    # Assert
    assert recovered == secret


def test_fewer_than_t_shares_are_refused() -> None:
    shares = shamir.split(bytes(range(32)), [1, 2, 3, 4, 5], 3)
    with pytest.raises(SecAggAbortedError, match="2 shares"):
        shamir.combine(shares[:2], 3, owner="site-a")


@pytest.mark.parametrize("t", [2, 3, 5])
def test_t_minus_one_shares_interpolate_to_garbage(t: int) -> None:
    # Prepare: fixed secret and polynomial, so the result is deterministic.
    rng = random.Random(t)
    secret = bytes(rng.randrange(256) for _ in range(32))
    coef = [rng.randrange(shamir.PRIME) for _ in range((t - 1) * shamir.ELEMENTS)]
    shares = shamir.split(secret, list(range(1, t + 2)), t, coefficients=coef)
    # Execute
    short = shamir.interpolate(shares[: t - 1])
    full = shamir.interpolate(shares[:t])
    # Assert
    as_ints = [int.from_bytes(secret[i : i + 16], "big") for i in (0, 16)]
    assert full == as_ints
    assert all(a != b for a, b in zip(short, as_ints, strict=True))


def test_inconsistent_shares_are_detected() -> None:
    # Prepare: secret 0, one share's y lowered by one: lambda_1 = 3, so the first element
    # interpolates to p - 3, outside the 128-bit range of a secret half.
    shares = shamir.split(bytes(32), [1, 2, 3], 3, coefficients=[5, 6, 7, 8])
    y0 = (shares[0].y[0] - 1) % shamir.PRIME
    bad = shamir.Share(shares[0].x, (y0, shares[0].y[1]))
    # Execute / Assert
    with pytest.raises(SecAggAuthError):
        shamir.combine([bad, *shares[1:]], 3)


@pytest.mark.parametrize("xs, t", [([1, 1, 2], 2), ([0, 1, 2], 2), ([1, 2], 3), ([1, 2], 0)])
def test_bad_parameters_are_refused(xs: list[int], t: int) -> None:
    with pytest.raises(ValueError):
        shamir.split(bytes(32), xs, t)
