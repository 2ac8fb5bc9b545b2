"""The global model as the coordinator serves it: wire-ready chunk messages, from memory or file.

A model of up to ``broadcast_memory_bytes`` (default 1 GiB) is kept as its encoded chunk messages
(:class:`EncodedModel`): the coordinator's only copy of it, shared by every node's pull without a
copy. A larger model is not kept in memory at all (:class:`FileModel`): each pull reads its chunks
from the round's committed safetensors checkpoint (page cache), one chunk at a time, so the
coordinator's memory is the running sum of the round plus a few chunks per pulling node.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from fedhive.common.data.safetensors_io import SafetensorsFile
from fedhive.common.errors import FedhiveError
from fedhive.common.wire import serde
from fedhive.common.wire.chunks import Chunk, iter_chunks, payload_digest
from fedhive.common.wire.tensors import TensorSpec, raw_view

DEFAULT_BROADCAST_MEMORY = 1 << 30


class ModelSource(Protocol):
    """The global model's chunk messages (task-independent: every broadcast shares them)."""

    digest: bytes  # SHA-256 of the raw tensor bytes in spec order (the task trailer's digest)

    def chunks(self) -> Iterable[bytes]: ...
    def arrays(self) -> list[np.ndarray]: ...


@dataclass
class EncodedModel:
    """The model as encoded chunk messages in memory."""

    encoded: list[bytes]
    digest: bytes
    specs: list[TensorSpec]

    @classmethod
    def of(
        cls, specs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], chunk_size: int
    ) -> EncodedModel:
        buffers = [raw_view(a) for a in arrays]
        encoded = [serde.task_chunk_bytes(c) for c in iter_chunks(buffers, chunk_size)]
        return cls(encoded, payload_digest(buffers), list(specs))

    def chunks(self) -> list[bytes]:
        return self.encoded

    def arrays(self) -> list[np.ndarray]:
        """A copy of the model (raw bytes per tensor), decoded from the chunks."""
        out = [np.empty(s.nbytes, dtype=np.uint8) for s in self.specs]
        for buf in self.encoded:
            chunk = serde.task_message_from_bytes(buf)
            assert isinstance(chunk, Chunk)
            end = chunk.offset + len(chunk.data)
            out[chunk.tensor][chunk.offset : end] = np.frombuffer(chunk.data, dtype=np.uint8)
        return out


class FileModel:
    """The model read chunk by chunk from its committed checkpoint for every pull."""

    def __init__(
        self, path: Path, specs: Sequence[TensorSpec], chunk_size: int, digest: bytes
    ) -> None:
        self.path = Path(path)
        self.specs = list(specs)
        self.chunk_size = chunk_size
        self.digest = digest
        st = SafetensorsFile(self.path)
        try:
            ranges = st.byte_ranges()
            got = {s.name: s for s in st.specs}
        finally:
            st.close()
        self.ranges: list[tuple[int, int]] = []
        for spec in self.specs:
            if got.get(spec.name) != spec:
                raise FedhiveError(f"{self.path}: tensor {spec.name!r} differs from the model")
            self.ranges.append(ranges[spec.name])

    @classmethod
    def of(
        cls,
        path: Path,
        specs: Sequence[TensorSpec],
        arrays: Sequence[np.ndarray],
        chunk_size: int,
    ) -> FileModel:
        """For a checkpoint just written from ``arrays`` (hashed here, not read back)."""
        return cls(path, specs, chunk_size, payload_digest([raw_view(a) for a in arrays]))

    @classmethod
    def load(cls, path: Path, specs: Sequence[TensorSpec], chunk_size: int) -> FileModel:
        """For a checkpoint on disk (resume): its payload digest is computed from the file."""
        model = cls(path, specs, chunk_size, b"")
        model.digest = payload_digest(piece for _, _, piece in model._pieces())
        return model

    def _pieces(self) -> Iterator[tuple[int, int, bytes]]:
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            for index, (begin, end) in enumerate(self.ranges):
                for offset in range(0, end - begin, self.chunk_size):
                    n = min(self.chunk_size, end - begin - offset)
                    data = os.pread(fd, n, begin + offset)
                    if len(data) != n:
                        raise FedhiveError(f"{self.path}: truncated checkpoint")
                    yield index, offset, data

    def chunks(self) -> Iterator[bytes]:
        for index, offset, data in self._pieces():
            yield serde.task_chunk_bytes(Chunk(index, offset, data))

    def arrays(self) -> list[np.ndarray]:
        out = [np.empty(s.nbytes, dtype=np.uint8) for s in self.specs]
        for index, offset, data in self._pieces():
            out[index][offset : offset + len(data)] = np.frombuffer(data, dtype=np.uint8)
        return out


@dataclass
class Broadcast:
    """A round's task for every node: header and trailer encoded once, the model's chunks."""

    header: bytes
    model: ModelSource | None
    trailer: bytes
    payload_bytes: int

    def messages(self) -> Iterator[bytes]:
        yield self.header
        if self.model is not None:
            yield from self.model.chunks()
        yield self.trailer


EMPTY_BROADCAST = Broadcast(b"", None, b"", 0)
