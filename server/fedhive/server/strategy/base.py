"""The strategy interface the round engine composes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from fedhive.common.wire.tensors import TensorSpec, to_float


class StagedUpdate(Protocol):
    """A fully checked update: its example count and its payload, tensor by tensor."""

    num_examples: int
    # optional ``peaks``: the largest |value| per tensor, if the stream's checks measured it

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        """The raw bytes of tensor ``tensor`` in order, in pieces."""
        ...


def delta_pieces(
    update: StagedUpdate, index: int, spec: TensorSpec, current: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, float64 delta) pieces of tensor ``index`` of ``update``: its values less
    ``current`` (that tensor of the round's global model, raw), piece by piece."""
    pos = 0
    for piece in update.pieces(index):
        values = to_float(piece, spec.dtype).astype(np.float64)
        n = values.size
        values -= to_float(np.ascontiguousarray(current[pos : pos + n]), spec.dtype)
        yield pos, values
        pos += n


@runtime_checkable
class Aggregator(Protocol):
    """Folds checked updates one at a time into O(model) state; finalize gives the new model."""

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        """Start a round for a model with ``specs`` (``global_raw``: the current global model)."""
        ...

    def fold(self, update: StagedUpdate) -> None: ...

    def finalize(self) -> list[np.ndarray]:
        """Raw arrays (storage dtype of each spec) of the new global model."""
        ...

    def state(self) -> dict[str, object]:
        """What must survive a coordinator restart (JSON-serialisable; e.g. optimiser moments)."""
        ...

    def restore(self, state: dict[str, object]) -> None: ...


class UpdateBlocks(Protocol):
    """The round's updates as a robust rule reads them: the same slice of one tensor in every
    update (:class:`fedhive.server.strategy.blocks.RetainedUpdates` keeps them on disk)."""

    @property
    def specs(self) -> Sequence[TensorSpec]: ...

    @property
    def examples(self) -> Sequence[int]:
        """Each update's example count, in arrival order."""
        ...

    def block(self, tensor: int, start: int, stop: int) -> np.ndarray:
        """Values ``start:stop`` (flat) of tensor ``tensor`` of every update: (N, stop - start),
        float32 (float64 for 64-bit tensors)."""
        ...

    def spans(self, tensor: int) -> Iterator[tuple[int, int]]:
        """``(start, stop)`` blocks covering tensor ``tensor``, sized for N updates."""
        ...


class RobustRule(Protocol):
    """A rule that must see every update of the round together (median, Krum ...).

    It reads them block by block (:class:`UpdateBlocks`) and returns the new model as float
    arrays (float32; float64 for 64-bit tensors), one per spec, shaped like it."""

    def check(self, count: int) -> None:
        """Raise :class:`~fedhive.common.errors.AggregationError` if ``count`` updates are too
        few for this rule."""
        ...

    def aggregate(self, blocks: UpdateBlocks) -> list[np.ndarray]: ...
