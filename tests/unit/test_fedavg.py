"""fedhive.server.strategy.fedavg: streaming FedAvg against flwr's aggregate as oracle."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.wire.tensors import DTYPES, TensorSpec, from_float, to_float
from fedhive.server.strategy.fedavg import FedAvg

with warnings.catch_warnings():
    # flwr's import chain trips deprecation warnings of its own dependencies (click, typer).
    warnings.simplefilter("ignore", DeprecationWarning)
    from flwr.server.strategy.aggregate import aggregate as flwr_aggregate


@dataclass
class FakeUpdate:
    """A staged update: raw bytes per tensor, handed out in pieces of ``piece_elems`` elements."""

    num_examples: int
    raw: list[bytes]
    itemsizes: list[int]
    piece_elems: int = 0  # 0: the whole tensor in one piece

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        view = memoryview(self.raw[tensor])
        step = len(view) if self.piece_elems == 0 else self.piece_elems * self.itemsizes[tensor]
        for start in range(0, len(view), max(step, 1)):
            yield view[start : start + step]


def make_update(specs, arrays, num_examples, piece_elems=0) -> FakeUpdate:
    raw = [
        np.ascontiguousarray(a, dtype=DTYPES[s.dtype].storage).tobytes()
        for s, a in zip(specs, arrays, strict=True)
    ]
    return FakeUpdate(num_examples, raw, [DTYPES[s.dtype].itemsize for s in specs], piece_elems)


def run_fedavg(specs, updates) -> list[np.ndarray]:
    agg = FedAvg()
    agg.begin(specs, None)
    for update in updates:
        agg.fold(update)
    return agg.finalize()


SHAPES = [(4, 3), (7,), (), (2, 1, 5), (0, 3)]


@given(
    seed=st.integers(0, 2**32 - 1),
    counts=st.lists(st.integers(1, 5000), min_size=1, max_size=6),
    piece_elems=st.integers(0, 4),
)
def test_float32_fedavg_equals_flwr_aggregate(seed, counts, piece_elems):
    rng = np.random.default_rng(seed)
    specs = [TensorSpec(f"t{i}", "float32", shape) for i, shape in enumerate(SHAPES)]
    models = [[rng.standard_normal(s.shape).astype(np.float32) * 3 for s in specs] for _ in counts]
    updates = [make_update(specs, m, n, piece_elems) for m, n in zip(models, counts, strict=True)]

    ours = run_fedavg(specs, updates)
    expected = flwr_aggregate(list(zip(models, counts, strict=True)))

    assert len(ours) == len(expected) == len(specs)
    for spec, got, want in zip(specs, ours, expected, strict=True):
        assert got.dtype == np.float32
        assert got.shape == spec.shape
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=spec.name)


def test_fedavg_of_a_single_update_is_that_update():
    specs = [TensorSpec("w", "float32", (3,))]
    w = np.array([1.5, -2.0, 1e-30], dtype=np.float32)

    (out,) = run_fedavg(specs, [make_update(specs, [w], 17)])

    np.testing.assert_array_equal(out, w)


def test_fedavg_weights_by_example_count():
    specs = [TensorSpec("w", "float32", (2,))]
    a = np.array([0.0, 10.0], dtype=np.float32)
    b = np.array([4.0, 2.0], dtype=np.float32)

    (out,) = run_fedavg(specs, [make_update(specs, [a], 1), make_update(specs, [b], 3)])

    np.testing.assert_array_equal(out, [3.0, 4.0])


def test_pieces_do_not_change_the_result():
    rng = np.random.default_rng(7)
    specs = [TensorSpec("w", "float32", (5, 3)), TensorSpec("b", "float16", (9,))]
    models = [[rng.standard_normal(s.shape) for s in specs] for _ in range(3)]

    whole = run_fedavg(
        specs, [make_update(specs, m, n) for m, n in zip(models, [3, 9, 1], strict=True)]
    )
    split = run_fedavg(
        specs, [make_update(specs, m, n, 2) for m, n in zip(models, [3, 9, 1], strict=True)]
    )

    for a, b in zip(whole, split, strict=True):
        assert a.tobytes() == b.tobytes()


# float16 and bfloat16: compare with the float64 mean of the decoded inputs, to the dtype's
# precision.
HALF_TOLERANCE = {"float16": 2.0**-10, "bfloat16": 2.0**-7}


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_fedavg_equals_float64_reference(name, seed):
    rng = np.random.default_rng(seed)
    specs = [TensorSpec("w", name, (6, 4)), TensorSpec("b", name, (4,)), TensorSpec("s", name, ())]
    counts = [int(n) for n in rng.integers(1, 1000, size=int(rng.integers(1, 6)))]
    raw_models = [
        [from_float(rng.standard_normal(s.shape).astype(np.float32) * 2, name) for s in specs]
        for _ in counts
    ]
    updates = [
        make_update(specs, m, n, int(rng.integers(0, 3)))
        for m, n in zip(raw_models, counts, strict=True)
    ]

    ours = run_fedavg(specs, updates)

    total = sum(counts)
    for index, spec in enumerate(specs):
        decoded = [to_float(m[index].tobytes(), name).astype(np.float64) for m in raw_models]
        reference = sum(n * d for n, d in zip(counts, decoded, strict=True)) / total
        got = to_float(ours[index].tobytes(), name).astype(np.float64)
        assert ours[index].dtype == DTYPES[name].storage
        assert ours[index].shape == spec.shape
        np.testing.assert_allclose(
            got, reference.reshape(-1), rtol=HALF_TOLERANCE[name], atol=1e-5, err_msg=spec.name
        )


def test_bfloat16_fedavg_rounds_the_mean_to_nearest():
    # Mean of 1.0 and 1.0 + 2**-7 (the next bf16) is the midpoint 1.0 + 2**-8: ties go to even.
    specs = [TensorSpec("w", "bfloat16", (2,))]
    a = np.array([0x3F80, 0x3F81], dtype=np.uint16)  # 1.0, 1.0078125
    b = np.array([0x3F81, 0x3F82], dtype=np.uint16)  # 1.0078125, 1.015625

    (out,) = run_fedavg(specs, [make_update(specs, [a], 5), make_update(specs, [b], 5)])

    assert out.tolist() == [0x3F80, 0x3F82]  # both midpoints round to the even word


def test_integer_tensors_are_averaged_and_rounded():
    specs = [TensorSpec("num_batches_tracked", "int64", ()), TensorSpec("mask", "bool", (3,))]
    first = [np.array(10, dtype=np.int64), np.array([True, False, True])]
    second = [np.array(20, dtype=np.int64), np.array([False, False, True])]

    steps, mask = run_fedavg(specs, [make_update(specs, first, 1), make_update(specs, second, 3)])

    assert steps.dtype == np.int64
    assert int(steps) == 18  # (10 + 3 * 20) / 4 = 17.5 -> 18 (half to even)
    assert mask.tolist() == [False, False, True]


def test_float64_tensors_accumulate_in_float64():
    specs = [TensorSpec("w", "float64", (2,))]
    a = np.array([1.0, 1e-12], dtype=np.float64)
    b = np.array([1.0 + 2**-40, 3e-12], dtype=np.float64)

    (out,) = run_fedavg(specs, [make_update(specs, [a], 1), make_update(specs, [b], 1)])

    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [1.0 + 2**-41, 2e-12], rtol=1e-15)


def test_finalize_without_an_update_raises():
    agg = FedAvg()
    agg.begin([TensorSpec("w", "float32", (2,))], None)

    with pytest.raises(ValueError, match="no update"):
        agg.finalize()


@pytest.mark.parametrize("num_examples", [0, -1, -100])
def test_update_without_a_positive_example_count_is_refused(num_examples):
    specs = [TensorSpec("w", "float32", (2,))]
    good = np.array([1.0, 2.0], dtype=np.float32)
    bad = np.array([100.0, 100.0], dtype=np.float32)
    agg = FedAvg()
    agg.begin(specs, None)

    with pytest.raises(ValueError, match="positive example count"):
        agg.fold(make_update(specs, [bad], num_examples))
    agg.fold(make_update(specs, [good], 2))

    assert agg.total_examples == 2
    assert agg.updates == 1
    np.testing.assert_array_equal(agg.finalize()[0], good)


def test_begin_starts_a_fresh_round():
    specs = [TensorSpec("w", "float32", (2,))]
    agg = FedAvg()
    agg.begin(specs, None)
    agg.fold(make_update(specs, [np.array([9.0, 9.0])], 4))
    agg.finalize()

    agg.begin(specs, None)
    with pytest.raises(ValueError, match="no update"):
        agg.finalize()
    agg.begin(specs, None)
    agg.fold(make_update(specs, [np.array([1.0, -1.0])], 1))

    np.testing.assert_array_equal(agg.finalize()[0], [1.0, -1.0])
