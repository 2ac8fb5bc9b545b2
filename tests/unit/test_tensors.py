"""fedhive.common.wire.tensors: raw bytes of torch tensors, finiteness, the float bridge."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fedhive.common.errors import InvalidUpdateError
from fedhive.common.wire.tensors import (
    DTYPES,
    MAX_DIMS,
    TensorSpec,
    check_finite,
    dtype,
    from_float,
    payload_bytes,
    peak_magnitude,
    spec_of,
    tensor_bytes,
    tensor_from_bytes,
    to_float,
    torch_dtype_name,
)

DTYPE_NAMES = list(DTYPES)
FLOAT_NAMES = [name for name, d in DTYPES.items() if d.is_float]
INT_NAMES = [name for name, d in DTYPES.items() if not d.is_float]

# Raw words of the float formats: finite extremes and every kind of non-finite value.
WORD = {"float16": "<u2", "bfloat16": "<u2", "float32": "<u4", "float64": "<u8"}
FINITE_WORDS = {
    "float16": [0x0000, 0x8000, 0x0001, 0x7BFF, 0xFBFF, 0x3C00],
    "bfloat16": [0x0000, 0x8000, 0x0001, 0x7F7F, 0xFF7F, 0x3F80],
    "float32": [0x00000000, 0x80000000, 0x00000001, 0x7F7FFFFF, 0xFF7FFFFF, 0x3F800000],
    "float64": [0, 1 << 63, 1, 0x7FEFFFFFFFFFFFFF, 0xFFEFFFFFFFFFFFFF, 0x3FF0000000000000],
}
NON_FINITE_WORDS = {
    # +inf, -inf, quiet NaN, signalling NaN, negative NaN, all-ones NaN
    "float16": [0x7C00, 0xFC00, 0x7E00, 0x7C01, 0xFE00, 0xFFFF],
    "bfloat16": [0x7F80, 0xFF80, 0x7FC0, 0x7F81, 0xFFC0, 0xFFFF],
    "float32": [0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFC00000, 0xFFFFFFFF],
    "float64": [
        0x7FF0000000000000,
        0xFFF0000000000000,
        0x7FF8000000000000,
        0x7FF0000000000001,
        0xFFF8000000000000,
        0xFFFFFFFFFFFFFFFF,
    ],
}


def torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def make_tensor(name: str, shape: tuple[int, ...], raw: bytes) -> torch.Tensor:
    """A tensor of dtype ``name`` and ``shape`` whose little-endian bytes are ``raw``."""
    if not raw:
        return torch.empty(shape, dtype=torch_dtype(name))
    return torch.frombuffer(bytearray(raw), dtype=torch_dtype(name)).reshape(shape)


@st.composite
def tensors_with_bytes(draw, shapes=None):
    name = draw(st.sampled_from(DTYPE_NAMES))
    if shapes is None:
        shapes = st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple)
    shape = draw(shapes)
    n = int(np.prod(shape, dtype=np.int64)) * DTYPES[name].itemsize
    raw = draw(st.binary(min_size=n, max_size=n))
    if name == "bool":  # only 0 and 1 are valid bools
        raw = bytes(b & 1 for b in raw)
    return name, shape, raw


# ----------------------------------------------------------------------------- round trip


@given(tensors_with_bytes())
def test_round_trip_is_bit_exact_for_every_dtype(case):
    name, shape, raw = case
    t = make_tensor(name, shape, raw)

    spec = spec_of("layer.weight", t)
    data = tensor_bytes(t)
    back = tensor_from_bytes(spec, data)

    assert spec == TensorSpec("layer.weight", name, shape)
    assert spec.nbytes == len(raw)
    assert bytes(data) == raw
    assert back.dtype == t.dtype
    assert tuple(back.shape) == shape
    assert bytes(tensor_bytes(back)) == raw


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_round_trip_of_every_dtype_with_typical_values(name):
    if name == "bool":
        t = torch.tensor([[True, False, True], [False, False, True]])
    elif DTYPES[name].is_float:
        t = torch.tensor([[0.0, -0.0, 1.5], [-2.25, 1e-3, 3.0e4]], dtype=torch_dtype(name))
    else:
        info = torch.iinfo(torch_dtype(name))
        t = torch.tensor([[info.min, -1 if info.min else 0, 0], [1, 7, info.max]])
        t = t.to(torch_dtype(name))

    back = tensor_from_bytes(spec_of("t", t), tensor_bytes(t))

    assert back.dtype == t.dtype
    assert torch.equal(back, t)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_round_trip_of_a_scalar(name):
    t = torch.tensor(1 if name != "bool" else True, dtype=torch_dtype(name))

    spec = spec_of("scalar", t)
    back = tensor_from_bytes(spec, tensor_bytes(t))

    assert spec.shape == ()
    assert spec.numel == 1
    assert spec.nbytes == DTYPES[name].itemsize
    assert back.shape == torch.Size([])
    assert back.dtype == t.dtype
    assert torch.equal(back, t)


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_round_trip_of_an_odd_shape(name):
    raw = bytes(range(15 * DTYPES[name].itemsize))
    if name == "bool":
        raw = bytes(b & 1 for b in raw)
    t = make_tensor(name, (3, 1, 5), raw)

    back = tensor_from_bytes(spec_of("odd", t), tensor_bytes(t))

    assert tuple(back.shape) == (3, 1, 5)
    assert bytes(tensor_bytes(back)) == raw


EMPTY_SHAPES = [(0,), (3, 0, 5), (0, 4), (0, 0)]


@pytest.mark.parametrize("shape", EMPTY_SHAPES)
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_round_trip_of_an_empty_tensor(name, shape):
    t = torch.empty(shape, dtype=torch_dtype(name))

    spec = spec_of("empty", t)
    data = tensor_bytes(t)
    back = tensor_from_bytes(spec, data)

    assert spec.nbytes == 0
    assert len(data) == 0
    assert tuple(back.shape) == shape
    assert back.dtype == t.dtype


@pytest.mark.parametrize("shape", [(3, 0, 5), (0, 4), (0,)])
def test_tensor_from_bytes_builds_empty_tensors_of_any_shape(shape):
    back = tensor_from_bytes(TensorSpec("empty", "float32", shape), b"")

    assert tuple(back.shape) == shape


@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_tensor_bytes_of_a_non_contiguous_tensor_are_its_row_major_bytes(name):
    base = torch.arange(12).reshape(3, 4)
    t = (base % 2 == 0) if name == "bool" else base.to(torch_dtype(name))
    transposed = t.t()

    data = tensor_bytes(transposed)

    assert not transposed.is_contiguous()
    assert bytes(data) == bytes(tensor_bytes(transposed.contiguous()))
    assert torch.equal(tensor_from_bytes(spec_of("t", transposed), data), transposed)


def test_tensor_from_bytes_copies_its_input():
    raw = bytearray(np.arange(4, dtype="<f4").tobytes())
    spec = TensorSpec("w", "float32", (4,))

    t = tensor_from_bytes(spec, memoryview(raw))
    raw[:] = bytes(len(raw))
    t += 1  # writable

    assert t.tolist() == [1.0, 2.0, 3.0, 4.0]


def test_tensor_from_bytes_refuses_a_wrong_length_naming_the_tensor():
    spec = TensorSpec("fc.weight", "float32", (2, 3))

    with pytest.raises(InvalidUpdateError, match=r"'fc\.weight'.*20 bytes, expected 24"):
        tensor_from_bytes(spec, bytes(20))


def test_spec_size_arithmetic():
    specs = [
        TensorSpec("a", "float32", (2, 3)),
        TensorSpec("b", "bfloat16", (5,)),
        TensorSpec("c", "int64", ()),
        TensorSpec("d", "bool", (0, 7)),
    ]

    assert [s.numel for s in specs] == [6, 5, 1, 0]
    assert [s.nbytes for s in specs] == [24, 10, 8, 0]
    assert payload_bytes(specs) == 42


# ----------------------------------------------------------------------------- dtypes


@pytest.mark.parametrize("bad", ["float8", "complex64", "Float32", "", "int4"])
def test_unknown_dtype_is_refused_with_its_name(bad):
    with pytest.raises(InvalidUpdateError, match="unknown dtype") as excinfo:
        dtype(bad)
    assert repr(bad) in str(excinfo.value)

    with pytest.raises(InvalidUpdateError, match="unknown dtype") as excinfo:
        TensorSpec("w", bad, (1,))
    assert repr(bad) in str(excinfo.value)

    with pytest.raises(InvalidUpdateError, match="unknown dtype"):
        to_float(b"", bad)


@pytest.mark.parametrize(
    "t", [torch.zeros(2, dtype=torch.complex64), torch.zeros(2, dtype=torch.uint16)]
)
def test_torch_dtype_that_cannot_travel_is_refused_with_its_name(t):
    with pytest.raises(InvalidUpdateError, match=str(t.dtype).removeprefix("torch.")):
        torch_dtype_name(t)


def test_tensor_spec_refuses_negative_dimensions_and_too_many_dimensions():
    with pytest.raises(InvalidUpdateError, match=r"'bias'.*negative dimension"):
        TensorSpec("bias", "float32", (2, -1))
    with pytest.raises(InvalidUpdateError, match=rf"'deep'.*{MAX_DIMS + 1} dimensions"):
        TensorSpec("deep", "float32", (1,) * (MAX_DIMS + 1))

    assert TensorSpec("ok", "float32", (1,) * MAX_DIMS).numel == 1


# ----------------------------------------------------------------------------- check_finite


def words(name: str, values: list[int]) -> bytes:
    return np.array(values, dtype=WORD[name]).tobytes()


@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_check_finite_accepts_finite_extremes(name):
    assert check_finite(words(name, FINITE_WORDS[name]), name)
    assert check_finite(b"", name)


@pytest.mark.parametrize("position", [0, 3, 5])
@pytest.mark.parametrize("name", FLOAT_NAMES)
def test_check_finite_refuses_every_non_finite_bit_pattern(name, position):
    for bad in NON_FINITE_WORDS[name]:
        values = list(FINITE_WORDS[name])
        values[position] = bad

        assert not check_finite(words(name, values), name), hex(bad)
        assert not check_finite(memoryview(words(name, values)), name), hex(bad)


@pytest.mark.parametrize("name", INT_NAMES)
def test_check_finite_ignores_integer_dtypes(name):
    raw = b"\xff" * (8 * DTYPES[name].itemsize)  # all-ones: NaN for every float format

    assert check_finite(raw, name)


@given(st.sampled_from(FLOAT_NAMES), st.data())
def test_check_finite_agrees_with_numpy_isfinite(name, data):
    width = np.dtype(WORD[name]).itemsize * 8
    values = data.draw(st.lists(st.integers(0, 2**width - 1), max_size=20))
    raw = words(name, values)
    expected = bool(np.all(np.isfinite(to_float(raw, name))))

    assert check_finite(raw, name) is expected


# ----------------------------------------------------------------------------- float bridge


def torch_bf16_words(values: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32).copy())
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def assert_same_bf16(ours: np.ndarray, ref: np.ndarray) -> None:
    """Bit-equal, except that any NaN matches any NaN (payloads may differ)."""
    ours_nan = (ours & 0x7FFF) > 0x7F80
    ref_nan = (ref & 0x7FFF) > 0x7F80
    np.testing.assert_array_equal(ours_nan, ref_nan)
    np.testing.assert_array_equal(ours[~ours_nan], ref[~ref_nan])


def test_bfloat16_to_float_is_exact_for_all_65536_words():
    all_words = np.arange(2**16, dtype=np.uint16)
    ref = torch.from_numpy(all_words.view(np.int16).copy()).view(torch.bfloat16).float()

    widened = to_float(all_words.tobytes(), "bfloat16")

    assert widened.dtype == np.float32
    np.testing.assert_array_equal(widened.view(np.uint32), ref.numpy().view(np.uint32))


def test_bfloat16_from_float_inverts_to_float_for_every_non_nan_word():
    all_words = np.arange(2**16, dtype=np.uint16)
    keep = (all_words & 0x7FFF) <= 0x7F80

    back = from_float(to_float(all_words.tobytes(), "bfloat16"), "bfloat16")

    np.testing.assert_array_equal(back[keep], all_words[keep])
    assert np.all((back[~keep] & 0x7FFF) > 0x7F80)


def test_bfloat16_from_float_rounds_ties_to_even_like_torch():
    # Every bf16 word w, then the float32 patterns just below, exactly at and just above the
    # midpoint between w and w+1: ties must go to the even word.
    base = np.arange(2**16, dtype=np.uint32) << 16
    patterns = np.concatenate([base, base | 0x7FFF, base | 0x8000, base | 0x8001, base | 0xFFFF])
    values = patterns.view(np.float32)

    ours = from_float(values, "bfloat16")

    assert ours.dtype == np.uint16
    assert_same_bf16(ours, torch_bf16_words(values))
    ties = (base | 0x8000).view(np.float32)
    tie_words = from_float(ties, "bfloat16")
    finite = np.isfinite(ties) & ((base >> 16) & 0x7F80 != 0x7F80)
    assert np.all(tie_words[finite] % 2 == 0)


def test_bfloat16_from_float_matches_torch_on_random_bit_patterns():
    rng = np.random.default_rng(20240611)
    values = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)

    ours = from_float(values.view(np.float32), "bfloat16")

    assert_same_bf16(ours, torch_bf16_words(values.view(np.float32)))


@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=50))
def test_bfloat16_from_float_matches_torch_on_any_float32(values):
    arr = np.array(values, dtype=np.float32)

    assert_same_bf16(from_float(arr, "bfloat16"), torch_bf16_words(arr))


@pytest.mark.parametrize("name", ["float32", "float16", "float64"])
def test_float_round_trip_through_to_float_and_from_float(name):
    raw = np.array([0.0, -1.5, 2.0**-10, 65504.0, -3.25], dtype=DTYPES[name].storage).tobytes()

    back = from_float(to_float(raw, name), name)

    assert back.tobytes() == raw


def test_to_float_widens_64_bit_types_to_float64_and_others_to_float32():
    assert to_float(np.zeros(2, "<i8").tobytes(), "int64").dtype == np.float64
    assert to_float(np.zeros(2, "<f8").tobytes(), "float64").dtype == np.float64
    for name in ("float16", "bfloat16", "int32", "int16", "int8", "uint8", "bool"):
        assert to_float(bytes(4 * DTYPES[name].itemsize), name).dtype == np.float32, name


def test_from_float_to_integers_rounds_half_to_even_and_saturates():
    values = np.array([-1e10, -128.6, -0.4, 2.5, 3.5, 126.6, 1e10], dtype=np.float64)

    assert from_float(values, "int8").tolist() == [-128, -128, 0, 2, 4, 127, 127]
    assert from_float(values, "uint8").tolist() == [0, 0, 0, 2, 4, 127, 255]
    assert from_float(np.array([0.0, 0.49, 0.5, 1.0]), "bool").tolist() == [
        False,
        False,
        True,
        True,
    ]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_peak_magnitude_is_the_largest_absolute_value_or_inf(dtype):
    values = np.array([1.5, -300.0, 2.0, 0.0], dtype=dtype)

    assert peak_magnitude(values.tobytes(), dtype) == 300.0
    values[2] = np.nan
    assert peak_magnitude(values.tobytes(), dtype) == math.inf
    values[2] = -np.inf
    assert peak_magnitude(values.tobytes(), dtype) == math.inf
    assert peak_magnitude(b"", dtype) == 0.0


def test_peak_magnitude_of_bfloat16_and_integer_bounds():
    words = (np.array([1.0, -7.5, 2.0], dtype=np.float32).view(np.uint32) >> 16).astype("<u2")

    assert peak_magnitude(words.tobytes(), "bfloat16") == 7.5
    assert peak_magnitude(b"\x00" * 8, "int32") == 2**31
    assert peak_magnitude(b"\x00", "uint8") == 255
    assert peak_magnitude(b"\x01", "bool") == 1.0
