"""Streaming safetensors writer/reader for raw tensor bytes (bf16 included, no torch needed).

Format: u64 little-endian header length, JSON header (padded with spaces to 8 bytes), then the
tensors' raw bytes back to back. Files are written to a temp name, fsynced and renamed, so a crash
leaves either the old file or the new one.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedhive.common.errors import FedhiveError
from fedhive.common.wire.tensors import TensorSpec

_TO_ST = {
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}
_FROM_ST = {v: k for k, v in _TO_ST.items()}


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_safetensors(
    path: Path,
    specs: Sequence[TensorSpec],
    buffers: Iterable[memoryview | bytes],
    metadata: Mapping[str, str] | None = None,
    hasher: Any = None,
) -> int:
    """Write atomically; returns the file size. ``hasher`` (e.g. ``hashlib.sha256()``), if
    given, is fed every byte written, so the file's digest needs no second read."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": _TO_ST[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(tmp, "wb") as f:
            prefix = struct.pack("<Q", len(raw)) + raw
            f.write(prefix)
            if hasher is not None:
                hasher.update(prefix)
            for spec, buf in zip(specs, buffers, strict=True):
                view = memoryview(buf).cast("B")
                if len(view) != spec.nbytes:
                    raise ValueError(
                        f"tensor {spec.name!r}: {len(view)} bytes, expected {spec.nbytes}"
                    )
                f.write(view)
                if hasher is not None:
                    hasher.update(view)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return size


class SafetensorsFile:
    """Read-only view of a safetensors file: specs in file order and zero-copy tensor bytes."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as f:
            try:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
            except (struct.error, ValueError) as exc:
                raise FedhiveError(f"{path}: not a safetensors file") from exc
            self._mm = (
                mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                if os.fstat(f.fileno()).st_size
                else None
            )
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
        self.specs: list[TensorSpec] = []
        self._ranges: list[tuple[int, int]] = []
        base = 8 + n
        for name, entry in entries:
            st = entry["dtype"]
            if st not in _FROM_ST:
                raise FedhiveError(f"{path}: unsupported dtype {st} for {name!r}")
            self.specs.append(TensorSpec(name, _FROM_ST[st], tuple(entry["shape"])))
            begin, end = entry["data_offsets"]
            self._ranges.append((base + begin, base + end))

    def buffer(self, index: int) -> memoryview:
        begin, end = self._ranges[index]
        if self._mm is None or begin == end:
            return memoryview(b"")
        return memoryview(self._mm)[begin:end]

    def buffers(self) -> list[memoryview]:
        return [self.buffer(i) for i in range(len(self.specs))]

    def byte_ranges(self) -> dict[str, tuple[int, int]]:
        """Each tensor's ``[begin, end)`` byte offsets in the file, by name."""
        return {spec.name: r for spec, r in zip(self.specs, self._ranges, strict=True)}

    def release(self, index: int, start: int = 0, stop: int | None = None) -> None:
        """Drop bytes ``start:stop`` of tensor ``index`` from this process's resident memory
        (they stay in the page cache; a later read maps them again). For readers that go
        through a large tensor once, so its pages do not add up in the process's RSS."""
        begin, end = self._ranges[index]
        lo = begin + start
        hi = end if stop is None else min(end, begin + stop)
        lo -= lo % mmap.PAGESIZE  # madvise wants a page-aligned start
        if self._mm is None or hi <= lo:
            return
        self._mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        """Unmap the file (left to the garbage collector while views of it are alive)."""
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                return
            self._mm = None
