"""The strategy interface the round engine composes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

from fedhive.common.tensors import TensorSpec


class StagedUpdate(Protocol):
    """A fully checked update: its example count and its payload, tensor by tensor."""

    num_examples: int
    # optional ``peaks``: the largest |value| per tensor, if the stream's checks measured it

    def pieces(self, tensor: int) -> Iterator[memoryview]:
        """The raw bytes of tensor ``tensor`` in order, in pieces."""
        ...


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
