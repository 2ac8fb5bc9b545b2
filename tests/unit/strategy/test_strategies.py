"""Strategies by name, updates kept on disk and read by blocks, server optimizer state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedhive.common.errors import AggregationError, ConfigError
from fedhive.common.wire.tensors import TensorSpec, to_float
from fedhive.server.strategy.blocks import RetainedUpdates
from fedhive.server.strategy.fedadam import FedAdam
from fedhive.server.strategy.fedmedian import FedMedian
from fedhive.server.strategy.fedopt import ServerOptimizing
from fedhive.server.strategy.krum import Krum
from fedhive.server.strategy.registry import BUILTINS, build_strategy, describe_builtins, sum_only
from fedhive.server.strategy.retaining import Retaining

SPECS = [TensorSpec("w", "float32", (3, 4)), TensorSpec("b", "bfloat16", (5,))]


class Update:
    def __init__(self, arrays: list[np.ndarray], n: int) -> None:
        self.arrays, self.num_examples = arrays, n

    def pieces(self, tensor: int):  # type: ignore[no-untyped-def]
        raw = np.ascontiguousarray(self.arrays[tensor]).tobytes()
        cut = len(raw) // 8 * 4  # two pieces, split on a word boundary
        yield memoryview(raw[:cut])
        yield memoryview(raw[cut:])


def update(value: float, n: int = 1) -> Update:
    w = np.full((3, 4), value, dtype=np.float32)
    b = (np.full(5, value, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    return Update([w, b], n)


def test_misspelled_argument_is_refused_naming_it() -> None:
    with pytest.raises(ConfigError, match="strategy fedadam: etaa: unknown argument"):
        build_strategy("fedadam", {"etaa": 0.1})
    with pytest.raises(ConfigError, match=r"beta: Input should be less than 0\.5"):
        build_strategy("fedtrimmedavg", {"beta": 0.5})
    with pytest.raises(ConfigError, match="m: Field required"):
        build_strategy("multikrum", {"f": 1})


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ConfigError, match=r"unknown strategy 'fedmedain'.*fedmedian"):
        build_strategy("fedmedain", {})


def test_user_strategy_is_loaded_by_import_path() -> None:
    strategy = build_strategy("tests.unit.strategy.user_strategy:make", {"scale": 2.0})
    assert strategy.scale == 2.0  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="lacks begin/fold/finalize"):
        build_strategy("tests.unit.strategy.user_strategy:not_a_strategy", {})
    with pytest.raises(ConfigError, match="has no callable 'nothing'"):
        build_strategy("tests.unit.strategy.user_strategy:nothing", {})


def test_every_builtin_builds_and_only_sum_rules_compose_with_secagg() -> None:
    args = {"multikrum": {"m": 2}}
    built = {name: build_strategy(name, args.get(name, {})) for name in BUILTINS}
    assert {n for n in BUILTINS if sum_only(n)} == {
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
    }
    assert all(isinstance(built[n], Retaining) for n in BUILTINS if not sum_only(n))
    assert not sum_only("tests.unit.strategy.user_strategy:make")
    assert all(name in describe_builtins() for name in BUILTINS)


def test_retained_updates_are_read_in_bounded_blocks(tmp_path: Path) -> None:
    # Prepare: 7 updates of a 1,000-value tensor, blocks of at most 4 KiB across all of them
    spec = TensorSpec("w", "float32", (1000,))
    store = RetainedUpdates([spec], tmp_path, block_bytes=4096)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(1000).astype(np.float32) for _ in range(7)]
    for a in arrays:
        store.add_arrays([a], 3)

    # Execute
    spans = list(store.spans(0))
    blocks = [store.block(0, lo, hi) for lo, hi in spans]

    # Assert: every value once, in order, and no block over the budget
    assert len(spans) > 1 and spans[0][0] == 0 and spans[-1][1] == 1000
    assert all(b.shape[0] == 7 and b.shape[1] * 7 * 8 <= 4096 for b in blocks)
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), np.stack(arrays))
    store.close()
    assert not list(tmp_path.glob("update-*"))


def test_retaining_median_in_storage_dtypes_and_files_removed(tmp_path: Path) -> None:
    # Prepare
    agg = Retaining(FedMedian(), tmp_path)
    agg.begin(SPECS, None)

    # Execute: a hostile 1e30 is outvoted
    for value, n in ((1.0, 5), (2.0, 1), (1e30, 1000)):
        agg.fold(update(value, n))
    out = agg.finalize()

    # Assert
    assert out[0].dtype == np.float32 and out[0].shape == (3, 4)
    assert np.all(out[0] == 2.0)
    assert out[1].dtype == np.uint16 and np.all(to_float(out[1].tobytes(), "bfloat16") == 2.0)
    assert not list(tmp_path.glob("update-*"))


def test_a_rule_whose_precondition_fails_names_it_and_keeps_nothing(tmp_path: Path) -> None:
    # Prepare: Krum with f=1 needs more than 4 updates
    agg = Retaining(Krum(f=1), tmp_path)
    agg.begin(SPECS, None)
    for value in (1.0, 2.0, 3.0):
        agg.fold(update(value))

    # Execute / Assert
    with pytest.raises(AggregationError, match="needs more than 4 updates, got 3"):
        agg.finalize()
    assert not list(tmp_path.glob("update-*"))


def run_rounds(agg: ServerOptimizing, start: list[np.ndarray], rounds: list[float]) -> list:
    current = start
    for value in rounds:
        agg.begin(SPECS, current)
        agg.fold(update(value, 2))
        agg.fold(update(value + 1.0, 1))
        current = agg.finalize()
    return current


def test_server_optimizer_state_resumes_bit_for_bit() -> None:
    # Prepare
    start = [np.zeros((3, 4), np.float32), np.zeros(5, np.uint16)]
    whole = ServerOptimizing(FedAdam(eta=0.1))
    first = ServerOptimizing(FedAdam(eta=0.1))

    # Execute: three rounds at once, or two, a restart from the saved state, then the third
    expected = run_rounds(whole, start, [1.0, 2.0, 3.0])
    middle = run_rounds(first, start, [1.0, 2.0])
    resumed = ServerOptimizing(FedAdam(eta=0.1))
    resumed.restore(first.state())
    resumed.restore_arrays({k: v.copy() for k, v in first.state_arrays().items()})
    got = run_rounds(resumed, middle, [3.0])

    # Assert
    assert first.state() == {"steps": 2}
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))


def test_server_optimizer_needs_the_global_model() -> None:
    with pytest.raises(AggregationError, match="needs the current global model"):
        ServerOptimizing(FedAdam()).begin(SPECS, None)
