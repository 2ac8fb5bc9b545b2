"""A round's checked updates kept on disk and read back block by block.

Rules that must see the updates together (coordinate-wise median, trimmed mean, Krum, Bulyan)
never hold N models in memory: each checked update is written once to its own file (the raw
little-endian words of its tensors, in spec order) and the rule reads the same block of every
update at a time through memory maps. Coordinator memory is O(model + N x block), whatever N is;
the page cache, not the process, holds what the disk has.

``RetainedUpdates`` is the store; ``base.UpdateBlocks`` is what a rule sees of it.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from fedhive.common.wire.tensors import DTYPES, TensorSpec, raw_view, to_float
from fedhive.server.strategy.base import StagedUpdate, UpdateBlocks

BLOCK_BYTES = 16 * 2**20
"""Bytes of float64 per block across all updates: a block is at most this / (8 N) values of
each of the N updates. Reads go through ``readinto`` into one buffer (no memory maps: mapped
file pages would count in the process's memory until unmapped)."""


class RetainedUpdates:
    """Checked updates written to files under ``folder`` (a fresh temporary folder by default);
    ``close()`` deletes them."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        folder: Path | None = None,
        block_bytes: int = BLOCK_BYTES,
    ) -> None:
        self.specs = list(specs)
        self.examples: list[int] = []
        self._owned = folder is None
        self.folder = (
            Path(tempfile.mkdtemp(prefix="fedhive-updates-")) if folder is None else folder
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.block_bytes = block_bytes
        self._offsets: list[int] = []
        offset = 0
        for spec in self.specs:
            self._offsets.append(offset)
            offset += spec.nbytes
        self.nbytes = offset
        self._files: list[Path] = []
        self._buffer = np.empty(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.examples)

    def add(self, update: StagedUpdate) -> None:
        """Write one checked update to its own file (it is not read again until ``block``)."""
        path = self.folder / f"update-{len(self.examples):05d}.bin"
        with open(path, "wb") as out:
            for index, spec in enumerate(self.specs):
                written = 0
                for piece in update.pieces(index):
                    out.write(piece)
                    written += len(piece)
                if written != spec.nbytes:
                    raise ValueError(f"tensor {spec.name!r}: {written} bytes, not {spec.nbytes}")
        self.examples.append(int(update.num_examples))
        self._files.append(path)

    def add_arrays(self, arrays: Sequence[np.ndarray], num_examples: int) -> None:
        """An update given as arrays (tests, tools): the same file as ``add``."""
        self.add(_ArrayUpdate(arrays, num_examples))

    def spans(self, tensor: int) -> Iterator[tuple[int, int]]:
        numel = self.specs[tensor].numel
        step = max(1, self.block_bytes // (8 * max(1, len(self.examples))))
        for start in range(0, numel, step):
            yield start, min(numel, start + step)
        if numel == 0:
            yield 0, 0

    def block(self, tensor: int, start: int, stop: int) -> np.ndarray:
        spec = self.specs[tensor]
        size = DTYPES[spec.dtype].itemsize
        offset = self._offsets[tensor] + start * size
        length = (stop - start) * size
        wide = np.float64 if spec.dtype in ("float64", "int64") else np.float32
        out = np.empty((len(self._files), stop - start), dtype=wide)
        if self._buffer.size < length:
            self._buffer = np.empty(length, dtype=np.uint8)
        raw = self._buffer[:length]
        for row, path in enumerate(self._files):
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                if f.readinto(raw.data) != length:
                    raise OSError(f"{path}: short read (was the file changed?)")
            out[row] = to_float(raw, spec.dtype)
        return out

    def close(self) -> None:
        self._files.clear()
        self._buffer = np.empty(0, dtype=np.uint8)
        if self._owned:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            for path in self.folder.glob("update-*.bin"):
                path.unlink(missing_ok=True)
        self.examples.clear()


class _ArrayUpdate:
    def __init__(self, arrays: Sequence[np.ndarray], num_examples: int) -> None:
        self.arrays = [np.ascontiguousarray(a) for a in arrays]
        self.num_examples = num_examples

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        yield raw_view(self.arrays[tensor])


def map_blocks(
    blocks: UpdateBlocks, reduce: Callable[[np.ndarray], np.ndarray]
) -> list[np.ndarray]:
    """The new model, block by block: ``reduce`` turns each (N, block) array of the updates'
    values into the block's new values; one array per tensor, shaped like it."""
    out = []
    for index, spec in enumerate(blocks.specs):
        result: np.ndarray | None = None
        for start, stop in blocks.spans(index):
            values = reduce(blocks.block(index, start, stop))
            if result is None:
                result = np.empty(spec.numel, dtype=values.dtype)
            result[start:stop] = values
        assert result is not None  # spans() yields at least one block, empty tensors too
        out.append(result.reshape(spec.shape))
    return out


def pairwise_sq_distances(blocks: UpdateBlocks) -> np.ndarray:
    """Squared Euclidean distances between every two updates over all their values, summed block by
    block in float64: an (N, N) matrix, never N models in memory."""
    n = len(blocks.examples)
    dist = np.zeros((n, n), dtype=np.float64)
    for tensor in range(len(blocks.specs)):
        for start, stop in blocks.spans(tensor):
            x = blocks.block(tensor, start, stop).astype(np.float64)
            for i in range(n):
                diff = x[i + 1 :] - x[i]
                d = np.einsum("ij,ij->i", diff, diff)
                dist[i, i + 1 :] += d
                dist[i + 1 :, i] += d
    return dist
