"""An :class:`~fedhive.server.strategy.base.Aggregator` for rules that must see every update of a
round together: each checked update is written to disk as it arrives
(:class:`~fedhive.server.strategy.blocks.RetainedUpdates`), and ``finalize`` runs the rule over
them block by block, then deletes them. Coordinator memory: O(model + N x block).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fedhive.common.errors import AggregationError
from fedhive.common.wire.tensors import TensorSpec, from_float
from fedhive.server.strategy.base import RobustRule, StagedUpdate
from fedhive.server.strategy.blocks import BLOCK_BYTES, RetainedUpdates


class Retaining:
    needs_updates = True
    """It must see each update: it cannot run under secure aggregation."""

    def __init__(
        self, rule: RobustRule, folder: Path | None = None, block_bytes: int = BLOCK_BYTES
    ) -> None:
        self.rule = rule
        self.folder = folder
        self.block_bytes = block_bytes
        self.specs: list[TensorSpec] = []
        self._updates: RetainedUpdates | None = None

    def begin(self, specs: Sequence[TensorSpec], global_raw: Sequence[np.ndarray] | None) -> None:
        self.abandon()
        self.specs = list(specs)
        self._updates = RetainedUpdates(self.specs, self.folder, self.block_bytes)

    def fold(self, update: StagedUpdate) -> None:
        if self._updates is None:
            raise AggregationError("fold before begin")
        if update.num_examples <= 0:
            raise ValueError("an update must carry a positive example count")
        self._updates.add(update)

    def finalize(self) -> list[np.ndarray]:
        if self._updates is None or len(self._updates) == 0:
            raise ValueError("no update was folded this round")
        try:
            floats = self.rule.aggregate(self._updates)
        finally:
            self.abandon()
        return [
            from_float(np.ascontiguousarray(a).reshape(-1), spec.dtype).reshape(spec.shape)
            for a, spec in zip(floats, self.specs, strict=True)
        ]

    def abandon(self) -> None:
        """Delete what this round retained (a round that failed or was abandoned)."""
        if self._updates is not None:
            self._updates.close()
            self._updates = None

    def state(self) -> dict[str, object]:
        """Robust rules keep nothing between rounds."""
        return {}

    def restore(self, state: dict[str, object]) -> None:
        if state:
            raise AggregationError(f"a robust rule has no state to restore, got {sorted(state)}")
