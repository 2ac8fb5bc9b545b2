"""FedTrimmedAvg (Yin et al., 2018): the coordinate-wise beta-trimmed mean, unweighted.

For each coordinate the ``floor(beta * N)`` smallest and largest values are dropped and the rest
averaged (Flower's and scipy's ``trim_mean``). Example counts are ignored, as in the paper and in
Flower. Read block by block from disk.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.errors import AggregationError
from fedhive.server.strategy.base import UpdateBlocks
from fedhive.server.strategy.blocks import map_blocks


class FedTrimmedAvgArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    beta: float = Field(default=0.2, ge=0.0, lt=0.5, description="share cut at each end")


class FedTrimmedAvg:
    def __init__(self, beta: float = 0.2) -> None:
        self.beta = FedTrimmedAvgArgs(beta=beta).beta

    def check(self, count: int) -> None:
        if count < 1:
            raise AggregationError("FedTrimmedAvg needs at least one update")

    def aggregate(self, blocks: UpdateBlocks) -> list[np.ndarray]:
        n = len(blocks.examples)
        self.check(n)
        low = int(self.beta * n)
        high = n - low

        def trimmed_mean(values: np.ndarray) -> np.ndarray:
            ordered = np.partition(values, (low, high - 1), axis=0)
            return np.asarray(np.mean(ordered[low:high], axis=0))

        return map_blocks(blocks, trimmed_mean)
