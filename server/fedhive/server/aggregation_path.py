"""The aggregation path's interface: how one round's checked updates become the new model.

:class:`AggregationPath` is what the round engine calls, whichever path the round has
(:mod:`fedhive.server.paths` chooses it); :class:`Outcome` is what closing it gives. No grpc.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.wire.tensors import TensorSpec

if TYPE_CHECKING:
    from fedhive.server.rounds import RoundState, UpdateSession


@dataclass
class Outcome:
    """What a round's aggregation gave: the new model, or no model and why."""

    arrays: Sequence[np.ndarray] = field(default_factory=list)  # one flat array per tensor
    failure: str = ""  # why the round must not be committed ("" when it may)
    aggregate_s: float | None = None  # time spent aggregating (None: no aggregation ran)
    examples: int | None = None  # the example count the mean is weighted by, where the path
    # knows it better than the nodes' claims (SecAgg+: the unmasked sum)
    privacy: dict[str, Any] | None = None  # the record's ``privacy`` the path knows of
    # (distributed DP: the noise the survivors delivered)


class AggregationPath(Protocol):
    """One round's aggregation. The engine calls ``watched`` and ``collected`` under its lock."""

    @property
    def task_config(self) -> Mapping[str, Any]:
        """Added to the round's task config (e.g. the SecAgg+ parameters)."""
        ...

    @property
    def upload_specs(self) -> list[TensorSpec] | None:
        """The tensors an upload carries (None: the model's)."""
        ...

    @property
    def weighted(self) -> bool:
        """Whether the record shows each node's weight (the fold used its example claim)."""
        ...

    def watched(self, st: RoundState) -> set[str]:
        """The nodes whose silence or leaving drops them from the round."""
        ...

    def collected(self, st: RoundState) -> bool:
        """Whether collection is over (nothing pending, no upload still being folded)."""
        ...

    def deadline_applies(self) -> bool:
        """Whether the round's deadline closes it now (a SecAgg+ unmask step has its own)."""
        ...

    def fold(self, session: UpdateSession) -> None:
        """Fold an update whose whole stream was staged and checked."""
        ...

    def step(self, node: str, request: SecAggRequest) -> SecAggReply:
        """One SecAgg+ step for ``node`` (StaleRoundError where the round has none)."""
        ...

    def close(self, reason: str, stopping: str, shortfall: str) -> Outcome:
        """The round's new model. ``reason``: why collection ended early ("" if it did not);
        ``stopping``: the coordinator is stopping; ``shortfall``: too few updates arrived.
        Either of the last two non-empty means the round is not committed."""
        ...
