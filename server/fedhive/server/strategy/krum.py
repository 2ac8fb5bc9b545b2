"""Krum and MultiKrum (Blanchard et al., 2017, "Machine learning with adversaries: Byzantine
tolerant gradient descent").

Each update is scored by the sum of its squared distances to its ``N - f - 2`` nearest others;
Krum (``m = 0``) takes the best-scored update as the new model, MultiKrum (``m > 0``) the
example-weighted mean of the ``m`` best (as Flower does). The (N, N) distances are summed block by
block from disk (float64), then the chosen updates are read again block by block.
Precondition: ``N > 2f + 2`` (the paper's); otherwise the round fails with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from fedhive.common.errors import AggregationError
from fedhive.server.strategy.base import UpdateBlocks
from fedhive.server.strategy.blocks import map_blocks, pairwise_sq_distances


class KrumArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    f: int = Field(default=0, ge=0, description="Byzantine nodes tolerated")
    m: int = Field(default=0, ge=0, description="updates averaged (0: Krum, one update)")


class MultiKrumArgs(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    f: int = Field(default=0, ge=0, description="Byzantine nodes tolerated")
    m: int = Field(ge=1, description="updates averaged")


def krum_scores(dist: np.ndarray, f: int) -> np.ndarray:
    """Each row's sum of distances to its ``max(1, N - f - 2)`` nearest others (itself excluded,
    as Flower: the first of its sorted row)."""
    n = len(dist)
    closest = max(1, n - f - 2)
    return np.array([np.sort(dist[i])[1 : closest + 1].sum() for i in range(n)])


def krum_select(dist: np.ndarray, f: int, m: int) -> list[int]:
    """Indices of the ``m`` best-scored updates (the one best when ``m`` is 0)."""
    scores = krum_scores(dist, f)
    if m <= 0:
        return [int(np.argmin(scores))]
    return [int(i) for i in np.argsort(scores, kind="stable")[:m]]


def weighted_mean(
    blocks: UpdateBlocks, chosen: Sequence[int], weights: Sequence[float] | None = None
) -> list[np.ndarray]:
    """The weighted mean (example counts by default) of the chosen updates, block by block."""
    w = np.array(
        [blocks.examples[i] for i in chosen] if weights is None else weights, dtype=np.float64
    )
    w = w / w.sum()
    rows = list(chosen)
    return map_blocks(
        blocks, lambda values: (w @ values[rows].astype(np.float64)).astype(values.dtype)
    )


class Krum:
    def __init__(self, f: int = 0, m: int = 0) -> None:
        args = KrumArgs(f=f, m=m)
        self.f, self.m = args.f, args.m

    def check(self, count: int) -> None:
        if count <= 2 * self.f + 2:
            raise AggregationError(
                f"Krum with f={self.f} needs more than {2 * self.f + 2} updates, got {count}"
            )
        if self.m > count:
            raise AggregationError(f"MultiKrum with m={self.m} needs {self.m} updates, got {count}")

    def aggregate(self, blocks: UpdateBlocks) -> list[np.ndarray]:
        self.check(len(blocks.examples))
        chosen = krum_select(pairwise_sq_distances(blocks), self.f, self.m)
        if self.m <= 0:  # the update itself, as Flower returns it
            return weighted_mean(blocks, chosen, [1.0])
        return weighted_mean(blocks, chosen)


class MultiKrum(Krum):
    """MultiKrum: Krum's scores, the example-weighted mean of the ``m`` best updates."""

    def __init__(self, f: int = 0, m: int = 1) -> None:
        if m < 1:
            raise AggregationError("MultiKrum needs m >= 1 (m = 0 is Krum)")
        super().__init__(f=f, m=m)
