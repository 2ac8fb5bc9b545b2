"""Tensors as (name, dtype, shape, raw little-endian bytes); never pickle.

The wire and the run directory know ten dtypes by name. ``bfloat16`` has no numpy dtype: its raw
words are handled as ``uint16`` and widened to float32 by a 16-bit shift (exact), narrowed back with
round-to-nearest-even, the same rounding torch uses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fedhive.common.errors import InvalidUpdateError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class DType:
    name: str
    itemsize: int
    storage: np.dtype[Any]  # numpy dtype of the raw words
    is_float: bool


_DTYPES = [
    DType("float32", 4, np.dtype("<f4"), True),
    DType("float16", 2, np.dtype("<f2"), True),
    DType("bfloat16", 2, np.dtype("<u2"), True),
    DType("float64", 8, np.dtype("<f8"), True),
    DType("int64", 8, np.dtype("<i8"), False),
    DType("int32", 4, np.dtype("<i4"), False),
    DType("int16", 2, np.dtype("<i2"), False),
    DType("int8", 1, np.dtype("i1"), False),
    DType("uint8", 1, np.dtype("u1"), False),
    DType("bool", 1, np.dtype("?"), False),
]
DTYPES: dict[str, DType] = {d.name: d for d in _DTYPES}

# Exponent masks of the float formats, applied to the raw words: all-ones exponent = inf or NaN.
_EXP_MASK = {
    "float16": (np.dtype("<u2"), 0x7C00),
    "bfloat16": (np.dtype("<u2"), 0x7F80),
    "float32": (np.dtype("<u4"), 0x7F800000),
    "float64": (np.dtype("<u8"), 0x7FF0000000000000),
}

MAX_DIMS = 16


def dtype(name: str) -> DType:
    try:
        return DTYPES[name]
    except KeyError:
        raise InvalidUpdateError(f"unknown dtype {name!r} (known: {', '.join(DTYPES)})") from None


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one tensor; ``nbytes`` is what its raw bytes must weigh."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        dtype(self.dtype)
        if len(self.shape) > MAX_DIMS:
            raise InvalidUpdateError(
                f"tensor {self.name!r}: {len(self.shape)} dimensions > {MAX_DIMS}"
            )
        if any(d < 0 for d in self.shape):
            raise InvalidUpdateError(f"tensor {self.name!r}: negative dimension in {self.shape}")

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize


def payload_bytes(specs: list[TensorSpec] | tuple[TensorSpec, ...]) -> int:
    return sum(s.nbytes for s in specs)


def raw_view(arr: np.ndarray) -> memoryview:
    """The bytes of ``arr`` as a flat memoryview (no copy when it is contiguous)."""
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data


def check_finite(data: memoryview | bytes | np.ndarray, dtype_name: str) -> bool:
    """True when every float word of ``data`` is finite (integers always are)."""
    mask = _EXP_MASK.get(dtype_name)
    if mask is None:
        return True
    words = np.frombuffer(data, dtype=mask[0])  # type: ignore[call-overload]
    if words.size == 0:
        return True
    return not bool(np.any((words & mask[1]) == mask[1]))


def peak_magnitude(data: memoryview | bytes | np.ndarray, dtype_name: str) -> float:
    """The largest ``|value|`` in ``data``: inf when a float word is NaN or inf; for integers,
    the largest magnitude their dtype can hold (a bound, not a scan). One pass over the words."""
    mask = _EXP_MASK.get(dtype_name)
    if mask is None:
        storage = DTYPES[dtype_name].storage
        if storage == np.bool_:
            return 1.0
        info = np.iinfo(storage)
        return float(max(-int(info.min), int(info.max)))
    word: np.dtype[Any] = mask[0]  # type: ignore[assignment]
    exponent = int(mask[1])
    words = np.frombuffer(data, dtype=word)
    if words.size == 0:
        return 0.0
    magnitude_bits = word.type((1 << (8 * word.itemsize - 1)) - 1)  # all but the sign
    top = int(np.max(words & magnitude_bits))
    if top >= exponent:  # all exponent bits set: inf or NaN
        return math.inf
    if dtype_name == "bfloat16":
        return float(np.array([top << 16], dtype="<u4").view(np.float32)[0])
    float_dtype = {"float16": "<f2", "float32": "<f4", "float64": "<f8"}[dtype_name]
    return float(np.array([top], dtype=word).view(float_dtype)[0])


def to_float(data: memoryview | bytes | np.ndarray, dtype_name: str) -> np.ndarray:
    """Raw words -> float32 array (float64 for float64 and 64-bit ints); a view where possible."""
    d = dtype(dtype_name)
    raw = np.frombuffer(data, dtype=d.storage)
    if dtype_name == "bfloat16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype_name == "float32":
        return raw
    if dtype_name in ("float64", "int64"):
        return raw.astype(np.float64)
    return raw.astype(np.float32)


def from_float(values: np.ndarray, dtype_name: str) -> np.ndarray:
    """float32/float64 array -> raw words of ``dtype_name`` (bf16: round to nearest even)."""
    d = dtype(dtype_name)
    if dtype_name == "bfloat16":
        f32 = np.ascontiguousarray(values, dtype=np.float32)
        bits = f32.view(np.uint32)
        rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
        out = ((bits + rounding) >> 16).astype(np.uint16)
        nan = np.isnan(f32)
        if nan.any():
            out[nan] = 0x7FC0
        return out
    if not d.is_float:
        if dtype_name == "bool":
            return values >= 0.5
        info = np.iinfo(d.storage)
        return np.clip(np.rint(values), info.min, info.max).astype(d.storage)
    return values.astype(d.storage, copy=False)


# --------------------------------------------------------------------------- torch bridge

_TORCH_NAMES = {
    "float32": "float32",
    "float16": "float16",
    "bfloat16": "bfloat16",
    "float64": "float64",
    "int64": "int64",
    "int32": "int32",
    "int16": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
}


def torch_dtype_name(t: torch.Tensor) -> str:
    name = str(t.dtype).removeprefix("torch.")
    if name not in _TORCH_NAMES:
        raise InvalidUpdateError(
            f"tensor dtype {t.dtype} cannot travel (known: {', '.join(DTYPES)})"
        )
    return name


def spec_of(name: str, t: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, torch_dtype_name(t), tuple(int(d) for d in t.shape))


def tensor_bytes(t: torch.Tensor) -> memoryview:
    """Raw little-endian bytes of a CPU tensor, without a copy when it is contiguous."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    elif t.dtype == torch.bool:
        t = t.view(torch.uint8)
    return raw_view(t.numpy())


def tensor_from_bytes(spec: TensorSpec, data: bytes | bytearray | memoryview) -> torch.Tensor:
    """A new CPU tensor holding a copy of ``data`` interpreted per ``spec``."""
    import torch

    if len(data) != spec.nbytes:
        raise InvalidUpdateError(
            f"tensor {spec.name!r}: {len(data)} bytes, expected {spec.nbytes} for "
            f"{spec.dtype}{list(spec.shape)}"
        )
    storage = DTYPES[spec.dtype].storage
    arr = np.frombuffer(data, dtype=storage).copy()
    t = torch.from_numpy(arr)
    if spec.dtype == "bfloat16":
        t = t.view(torch.int16).view(torch.bfloat16)
    return t.reshape(spec.shape)
