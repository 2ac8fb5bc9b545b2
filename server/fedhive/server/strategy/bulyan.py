"""Bulyan (El Mhamdi et al., 2018, "The hidden vulnerability of distributed learning in
Byzantium"), over Krum as Flower runs it.

Krum picks ``theta = N - 2f`` updates one at a time (each pick removed before the next); then, for
every coordinate, the ``beta = theta - 2f`` picked values closest to the picked updates' median are
averaged. The pairwise distances are summed once, block by block from disk; each Krum pick works on
their sub-matrix. Precondition: ``N >= 4f + 3``.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.errors import AggregationError
from fedhive.server.strategy.base import UpdateBlocks
from fedhive.server.strategy.blocks import map_blocks, pairwise_sq_distances
from fedhive.server.strategy.krum import krum_select


class BulyanArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    f: int = Field(default=0, ge=0, description="Byzantine nodes tolerated")


class Bulyan:
    def __init__(self, f: int = 0) -> None:
        self.f = BulyanArgs(f=f).f

    def check(self, count: int) -> None:
        if count < 4 * self.f + 3:
            raise AggregationError(
                f"Bulyan with f={self.f} needs at least {4 * self.f + 3} updates, got {count}"
            )

    def select(self, dist: np.ndarray) -> list[int]:
        remaining = list(range(len(dist)))
        picked: list[int] = []
        for _ in range(len(dist) - 2 * self.f):
            sub = dist[np.ix_(remaining, remaining)]
            best = remaining[krum_select(sub, self.f, 0)[0]]
            picked.append(best)
            remaining.remove(best)
        return picked

    def aggregate(self, blocks: UpdateBlocks) -> list[np.ndarray]:
        n = len(blocks.examples)
        self.check(n)
        picked = self.select(pairwise_sq_distances(blocks))
        beta = len(picked) - 2 * self.f

        def closest_to_median(values: np.ndarray) -> np.ndarray:
            chosen = values[picked]
            median = np.median(chosen, axis=0)
            order = np.argpartition(np.abs(median - chosen), kth=beta - 1, axis=0)
            return np.asarray(np.mean(np.take_along_axis(chosen, order, axis=0)[:beta], axis=0))

        return map_blocks(blocks, closest_to_median)
