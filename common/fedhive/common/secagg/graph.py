"""The neighbour graph of a SecAgg+ round (Bell et al. 2020) and its threshold.

Nodes are the round's selected node ids, sorted; node ``i`` (0-based) holds share index ``i + 1``.
Each node deals Shamir shares of its secrets to its *closed* neighbourhood (itself and its ``k``
neighbours, ``k + 1`` holders), any ``t`` of which reconstruct them.

- Small rounds (``n <= COMPLETE_UP_TO``) use the complete graph (``k = n - 1``): Bonawitz et al.
  2017, and up to ``n - t`` dropouts at any stage are recovered.
- Larger rounds use a random k-regular graph with ``k = O(log n)`` (even): the nodes are placed on a
  ring in an order drawn from the round's shared seed and each is joined to its ``k / 2``
  successors and predecessors (a Harary graph on a random permutation). Every node must then keep
  ``t`` live holders in its own neighbourhood.
- ``t`` defaults to a strict majority of the ``k + 1`` holders and must stay above half of them:
  otherwise a coordinator that lies about who dropped could collect both the self-mask share and
  the key share of one node and unmask its input.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedhive.common.errors import ConfigError

COMPLETE_UP_TO = 16
MIN_NODES = 2


def default_degree(n: int) -> int:
    """``n - 1`` for small rounds, else an even ``k`` of about ``3 log2 n``."""
    if n <= COMPLETE_UP_TO:
        return n - 1
    k = 2 * math.ceil(1.5 * math.log2(n))
    return min(n - 1, k)


def default_threshold(degree: int) -> int:
    """A strict majority of the ``degree + 1`` holders."""
    return (degree + 1) // 2 + 1


@dataclass(frozen=True)
class Graph:
    """Who shares with whom in one round; build with :meth:`build` (it checks the parameters)."""

    nodes: tuple[str, ...]
    degree: int
    threshold: int
    seed: int
    _adj: dict[str, frozenset[str]] = field(repr=False, compare=False, default_factory=dict)

    @classmethod
    def build(
        cls,
        nodes: Sequence[str],
        *,
        seed: int,
        degree: int | None = None,
        threshold: int | None = None,
    ) -> Graph:
        ordered = tuple(sorted(nodes))
        n = len(ordered)
        if n < MIN_NODES or len(set(ordered)) != n:
            raise ConfigError(
                f"secure aggregation needs at least {MIN_NODES} distinct nodes, got {n}"
            )
        k = default_degree(n) if degree is None else degree
        if not 1 <= k <= n - 1:
            raise ConfigError(f"secagg degree k={k} must be in [1, {n - 1}] for {n} nodes")
        if k < n - 1 and k % 2:
            raise ConfigError(f"secagg degree k={k} must be even below the complete graph (n={n})")
        t = default_threshold(k) if threshold is None else threshold
        if not (k + 1) / 2 < t <= k + 1:
            raise ConfigError(
                f"secagg threshold t={t} must be more than half of the k+1={k + 1} share holders "
                f"and at most k+1 (a smaller t lets the coordinator unmask one node's input)"
            )
        adj: dict[str, set[str]] = {u: set() for u in ordered}
        if k == n - 1:
            for u in ordered:
                adj[u] = set(ordered) - {u}
        else:
            ring = list(ordered)
            random.Random(seed).shuffle(ring)
            for i, u in enumerate(ring):
                for step in range(1, k // 2 + 1):
                    v = ring[(i + step) % n]
                    adj[u].add(v)
                    adj[v].add(u)
        return cls(ordered, k, t, seed, {u: frozenset(vs) for u, vs in adj.items()})

    @property
    def n(self) -> int:
        return len(self.nodes)

    def index(self, node: str) -> int:
        """The 1-based Shamir x of ``node``."""
        return self.nodes.index(node) + 1

    def neighbours(self, node: str) -> frozenset[str]:
        """``node``'s neighbours, without itself."""
        return self._adj[node]

    def holders(self, node: str) -> frozenset[str]:
        """Who holds shares of ``node``'s secrets: its neighbours and itself."""
        return self._adj[node] | {node}

    def __contains__(self, node: object) -> bool:
        return node in self._adj
