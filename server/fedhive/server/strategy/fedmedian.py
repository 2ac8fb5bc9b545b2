"""FedMedian (Yin et al., 2018, "Byzantine-robust distributed learning: towards optimal
statistical rates"): the coordinate-wise median of the updates, unweighted.

Example counts are ignored, as in the paper and in Flower: a weighted median would let a node
that claims many examples move every coordinate. Read block by block from disk.
"""

from __future__ import annotations

import numpy as np

from fedhive.common.errors import AggregationError
from fedhive.server.strategy.base import UpdateBlocks
from fedhive.server.strategy.blocks import map_blocks


class FedMedian:
    def check(self, count: int) -> None:
        if count < 1:
            raise AggregationError("FedMedian needs at least one update")

    def aggregate(self, blocks: UpdateBlocks) -> list[np.ndarray]:
        self.check(len(blocks.examples))
        return map_blocks(blocks, lambda values: np.median(values, axis=0))
