"""Every built-in rule against flwr 1.41's implementation on the same inputs (flwr is the oracle).

Hypothesis draws the tensors' shapes, the node count, the example counts and the values. The
robust rules read their updates back from disk in deliberately small blocks (so a tensor spans
several blocks); the server optimizers run three rounds each. Tolerances, per rule:

* FedMedian, Krum: bit for bit (both pick values, no arithmetic, or the same arithmetic).
* FedTrimmedAvg, Bulyan: rtol 1e-6 (the same float32 mean over the same values).
* MultiKrum: rtol 1e-5 (fedhive's weighted mean is float64, Flower's float32).
* FedAvgM, FedAdam, FedYogi, FedAdagrad: rtol 1e-4, atol 1e-5 after three rounds (Flower's
  in-place float32 mean vs fedhive's float32 running sum; the optimizers then amplify that).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.strategy.blocks import RetainedUpdates
from fedhive.server.strategy.bulyan import Bulyan
from fedhive.server.strategy.fedadagrad import FedAdagrad
from fedhive.server.strategy.fedadam import FedAdam
from fedhive.server.strategy.fedavgm import FedAvgM
from fedhive.server.strategy.fedmedian import FedMedian
from fedhive.server.strategy.fedopt import ServerOptimizing
from fedhive.server.strategy.fedtrimmedavg import FedTrimmedAvg
from fedhive.server.strategy.fedyogi import FedYogi
from fedhive.server.strategy.krum import Krum, MultiKrum

with warnings.catch_warnings():  # flwr's own imports warn (click deprecations): not ours
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import FedAdagrad as FlwrFedAdagrad
    from flwr.server.strategy import FedAdam as FlwrFedAdam
    from flwr.server.strategy import FedAvgM as FlwrFedAvgM
    from flwr.server.strategy import FedYogi as FlwrFedYogi
    from flwr.server.strategy.aggregate import (
        aggregate_bulyan,
        aggregate_krum,
        aggregate_median,
        aggregate_trimmed_avg,
    )

SMALL_BLOCK = 64  # bytes per block across all updates: several blocks per tensor
VALUES = st.floats(-100, 100, width=32, allow_subnormal=False)
SHAPES = st.lists(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5), min_size=1, max_size=3)

Updates = list[tuple[list[np.ndarray], int]]


@st.composite
def updates(draw: st.DrawFn, min_nodes: int, max_nodes: int = 9) -> Updates:
    shapes = draw(SHAPES)
    n = draw(st.integers(min_nodes, max_nodes))
    out = []
    for _ in range(n):
        arrays = [draw(hnp.arrays(np.float32, shape, elements=VALUES)) for shape in shapes]
        out.append((arrays, draw(st.integers(1, 1000))))
    return out


def specs_of(arrays: list[np.ndarray]) -> list[TensorSpec]:
    return [TensorSpec(f"t{i}", "float32", a.shape) for i, a in enumerate(arrays)]


def fedhive_rule(rule: Any, results: Updates, tmp: Path) -> list[np.ndarray]:
    store = RetainedUpdates(specs_of(results[0][0]), tmp, block_bytes=SMALL_BLOCK)
    try:
        for arrays, n in results:
            store.add_arrays(arrays, n)
        return [np.asarray(a, dtype=np.float32) for a in rule.aggregate(store)]
    finally:
        store.close()


def copy(results: Updates) -> Updates:
    return [([a.copy() for a in arrays], n) for arrays, n in results]


def assert_layers(ours: list[np.ndarray], theirs: list[np.ndarray], **tol: float) -> None:
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.shape == np.asarray(b).shape
        if tol:
            np.testing.assert_allclose(a, b, **tol)
        else:
            np.testing.assert_array_equal(a, np.asarray(b, dtype=np.float32))


def distinct(results: Updates) -> bool:
    """Krum's choice is only defined up to ties: drop draws with equal updates or scores."""
    flat = [np.concatenate([a.ravel() for a in arrays]) for arrays, _ in results]
    return len({f.tobytes() for f in flat}) == len(flat)


@settings(max_examples=40)
@given(results=updates(min_nodes=1))
def test_fedmedian_matches_flwr(results: Updates, tmp_path_factory: pytest.TempPathFactory) -> None:
    ours = fedhive_rule(FedMedian(), results, tmp_path_factory.mktemp("u"))
    assert_layers(ours, aggregate_median(copy(results)))


@settings(max_examples=40)
@given(results=updates(min_nodes=1), beta=st.sampled_from([0.0, 0.1, 0.2, 0.3, 0.45]))
def test_fedtrimmedavg_matches_flwr(
    results: Updates, beta: float, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ours = fedhive_rule(FedTrimmedAvg(beta), results, tmp_path_factory.mktemp("u"))
    assert_layers(ours, aggregate_trimmed_avg(copy(results), beta), rtol=1e-6, atol=1e-6)


@settings(max_examples=40)
@given(results=updates(min_nodes=3), f=st.integers(0, 3), data=st.data())
def test_krum_and_multikrum_match_flwr(
    results: Updates, f: int, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory
) -> None:
    n = len(results)
    f = min(f, (n - 3) // 2)  # the precondition n > 2f + 2
    m = data.draw(st.integers(0, n))
    if not distinct(results):
        return
    rule = Krum(f=f) if m == 0 else MultiKrum(f=f, m=m)

    ours = fedhive_rule(rule, results, tmp_path_factory.mktemp("u"))
    theirs = aggregate_krum(copy(results), f, m)

    if m == 0:
        assert_layers(ours, theirs)
    else:
        assert_layers(ours, theirs, rtol=1e-5, atol=1e-4)


@settings(max_examples=30)
@given(results=updates(min_nodes=3, max_nodes=11), f=st.integers(0, 2))
def test_bulyan_matches_flwr(
    results: Updates, f: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    f = min(f, (len(results) - 3) // 4)  # the precondition n >= 4f + 3
    if not distinct(results):
        return
    ours = fedhive_rule(Bulyan(f=f), results, tmp_path_factory.mktemp("u"))
    theirs = aggregate_bulyan(copy(results), f, aggregate_krum, to_keep=0)
    assert_layers(ours, theirs, rtol=1e-6, atol=1e-5)


def fit_res(arrays: list[np.ndarray], n: int) -> tuple[Any, FitRes]:
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})
    return None, res


OPTIMIZERS: dict[str, tuple[Callable[..., Any], Callable[..., Any], dict[str, float]]] = {
    "fedavgm": (
        FedAvgM,
        FlwrFedAvgM,
        {"server_learning_rate": 0.7, "server_momentum": 0.9},
    ),
    "fedadam": (FedAdam, FlwrFedAdam, {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3}),
    "fedyogi": (FedYogi, FlwrFedYogi, {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-3}),
    "fedadagrad": (FedAdagrad, FlwrFedAdagrad, {"eta": 0.05, "tau": 1e-3}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@settings(max_examples=15)
@given(shapes=SHAPES, n=st.integers(1, 5), data=st.data())
def test_server_optimizers_match_flwr_over_three_rounds(
    name: str, shapes: list[tuple[int, ...]], n: int, data: st.DataObject
) -> None:
    # Prepare: the same initial model and the same three rounds of updates for both
    ours_cls, theirs_cls, args = OPTIMIZERS[name]
    initial = [data.draw(hnp.arrays(np.float32, s, elements=VALUES)) for s in shapes]
    rounds = [
        [
            (
                [data.draw(hnp.arrays(np.float32, s, elements=VALUES)) for s in shapes],
                data.draw(st.integers(1, 1000)),
            )
            for _ in range(n)
        ]
        for _ in range(3)
    ]
    theirs = theirs_cls(initial_parameters=ndarrays_to_parameters(initial), **args)
    ours = ServerOptimizing(ours_cls(**args))
    specs = specs_of(initial)
    current = [a.copy() for a in initial]

    for server_round, results in enumerate(rounds, start=1):
        # Execute
        params, _ = theirs.aggregate_fit(
            server_round, [fit_res([a.copy() for a in arrays], k) for arrays, k in results], []
        )
        ours.begin(specs, current)
        for arrays, k in results:
            ours.fold(_Update(arrays, k))
        current = ours.finalize()

        # Assert: after every round
        assert params is not None
        assert_layers(current, parameters_to_ndarrays(params), rtol=1e-4, atol=1e-5)


class _Update:
    def __init__(self, arrays: list[np.ndarray], n: int) -> None:
        self.arrays, self.num_examples = arrays, n

    def pieces(self, tensor: int) -> Any:
        yield memoryview(np.ascontiguousarray(self.arrays[tensor]).tobytes())
