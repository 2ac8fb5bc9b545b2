"""Neighbour graphs: complete for small rounds, k-regular of logarithmic degree for large ones."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import ConfigError
from fedhive.common.secagg.graph import COMPLETE_UP_TO, Graph, default_degree


def ids(n: int) -> list[str]:
    return [f"n{i}" for i in range(n)]


@given(n=st.integers(2, COMPLETE_UP_TO))
def test_small_rounds_use_the_complete_graph(n: int) -> None:
    g = Graph.build(ids(n), seed=0)
    assert all(g.neighbours(u) == set(ids(n)) - {u} for u in ids(n))
    assert (n) / 2 < g.threshold <= n


@given(n=st.integers(COMPLETE_UP_TO + 1, 3000), seed=st.integers(0, 100))
def test_large_rounds_are_k_regular_symmetric_and_logarithmic(n: int, seed: int) -> None:
    # Execute
    g = Graph.build(ids(n), seed=seed)
    # Assert
    assert g.degree == default_degree(n) <= 2 * (1.5 * n.bit_length() + 1)
    for u in g.nodes:
        assert len(g.neighbours(u)) == g.degree and u not in g.neighbours(u)
        assert all(u in g.neighbours(v) for v in g.neighbours(u))


def test_the_shared_seed_fixes_the_graph() -> None:
    a = Graph.build(ids(50), seed=3)
    b = Graph.build(list(reversed(ids(50))), seed=3)
    c = Graph.build(ids(50), seed=4)
    assert all(a.neighbours(u) == b.neighbours(u) for u in a.nodes)
    assert any(a.neighbours(u) != c.neighbours(u) for u in a.nodes)


@pytest.mark.parametrize(
    "n, degree, threshold, match",
    [
        (1, None, None, "at least 2"),
        (5, 5, None, "degree"),
        (20, 5, None, "even"),
        (5, None, 2, "more than half"),
        (5, None, 6, "more than half"),
    ],
)
def test_unsafe_parameters_are_refused(n: int, degree, threshold, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Graph.build(ids(n), seed=0, degree=degree, threshold=threshold)
