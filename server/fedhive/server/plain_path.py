"""The plain aggregation path: each checked update is folded into the strategy. No grpc.

:class:`PlainPath` begins the strategy on the round's global model when the round opens, folds
each update (staged in the spool, checked end to end) into it, one fold at a time, and closes
with the strategy's ``finalize`` (or ``abandon`` when the round will not be committed).
:class:`CollectPath` is the final federated evaluation's: it waits for the nodes' metrics and
aggregates no model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhive.common.errors import StaleRoundError
from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.aggregation import StrategyHost
from fedhive.server.aggregation_path import Outcome

if TYPE_CHECKING:
    from fedhive.server.rounds import RoundState, UpdateSession


class CollectPath:
    """A round that aggregates no model (the final federated evaluation)."""

    task_config: Mapping[str, Any] = {}
    upload_specs: list[TensorSpec] | None = None
    weighted = True

    def watched(self, st: RoundState) -> set[str]:
        return st.pending()

    def collected(self, st: RoundState) -> bool:
        return not st.pending() and not st.uploads and st.folding == 0

    def deadline_applies(self) -> bool:
        return True

    def fold(self, session: UpdateSession) -> None:
        raise StaleRoundError(f"update from {session.node_id}: no training round is open")

    def step(self, node: str, request: SecAggRequest) -> SecAggReply:
        raise StaleRoundError(f"secagg step from {node}: no secure round is open")

    def close(self, reason: str, stopping: str, shortfall: str) -> Outcome:
        return Outcome(failure=stopping or shortfall or "no model is aggregated in this round")


class PlainPath(CollectPath):
    """Stage -> fold into the strategy -> finalize."""

    def __init__(
        self, strategy: StrategyHost, specs: Sequence[TensorSpec], global_path: Path
    ) -> None:
        self.strategy = strategy
        self._lock = threading.Lock()  # folds of concurrent uploads, one at a time
        strategy.begin(specs, global_path)

    def fold(self, session: UpdateSession) -> None:
        with self._lock:
            self.strategy.aggregator.fold(session)

    def close(self, reason: str, stopping: str, shortfall: str) -> Outcome:
        failure = stopping or shortfall
        if failure:
            self.strategy.abandon()
            return Outcome(failure=failure)
        started = time.monotonic()
        arrays, failure = self.strategy.finalize()
        return Outcome(arrays, failure, round(time.monotonic() - started, 6))
