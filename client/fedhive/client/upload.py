"""A node's update as the message stream PushUpdate takes: header, chunks, trailer."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fedhive.common.wire.chunks import Chunk, iter_chunks, payload_hash
from fedhive.common.wire.messages import (
    JoinReply,
    TaskHeader,
    UpdateHeader,
    UpdateMessage,
    UpdateTrailer,
)
from fedhive.common.wire.tensors import TensorSpec

Trailer = tuple[dict[str, float], dict[str, float], int, float | None]  # UpdateTrailer's fields
DEFAULT_CHUNK = 1 << 20  # bytes per chunk when the task header names none


def update_messages(
    joined: JoinReply,
    header: TaskHeader,
    num_examples: int,
    specs: list[TensorSpec],
    buffers: list[memoryview],
    trailer: Trailer,
) -> Iterator[UpdateMessage]:
    chunks = iter_chunks(buffers, header.chunk_size or DEFAULT_CHUNK)
    return update_stream(joined, header, num_examples, specs, chunks, trailer)


def update_stream(
    joined: JoinReply,
    header: TaskHeader,
    num_examples: int,
    specs: list[TensorSpec],
    chunks: Iterable[Chunk],
    trailer: Trailer,
) -> Iterator[UpdateMessage]:
    digest = payload_hash()
    yield UpdateHeader(joined.auth, header.round, num_examples, tuple(specs))
    for chunk in chunks:
        digest.update(chunk.data)
        yield chunk
    yield UpdateTrailer(digest.digest(), *trailer)
