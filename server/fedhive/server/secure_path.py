"""The SecAgg+ aggregation path: masked uploads summed, unmasked, dequantized. No grpc.

The round's :class:`~fedhive.server.secure.SecureRound` answers the nodes' key-exchange steps,
folds each checked masked upload (uint32 words), and at the close unmasks the sum and dequantizes
it into the example-weighted mean. The strategy sees only that mean (``from_mean``): a rule that
must see each update never runs here (:class:`~fedhive.server.paths.Paths` refuses it at start).

Every step needs its participants, so a selected node that leaves or falls silent is dropped
from the round even after its upload arrived (the unmask step still needs it), and the SecAgg
round is told about every node that dropped or was refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedhive.common.errors import NotSelectedError
from fedhive.common.secagg.messages import SecAggReply, SecAggRequest
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.aggregation import StrategyHost
from fedhive.server.aggregation_path import Outcome
from fedhive.server.secure import SecureRound, finalize_secure

if TYPE_CHECKING:
    from fedhive.server.rounds import RoundState, UpdateSession


class SecurePath:
    """Masked uint32 fold -> unmask -> dequantize -> the strategy's step from the mean."""

    weighted = False  # the coordinator never sees who brought how many examples

    def __init__(
        self, number: int, secure: SecureRound, strategy: StrategyHost, global_path: Path
    ) -> None:
        self.number = number
        self.secure = secure
        self.strategy = strategy
        self.global_path = global_path
        self.nodes = frozenset(secure.identities)
        self.gone: set[str] = set()  # reported to the SecAgg round as dropped

    @property
    def task_config(self) -> Mapping[str, Any]:
        return self.secure.task_config

    @property
    def upload_specs(self) -> list[TensorSpec] | None:
        return self.secure.upload_specs

    def watched(self, st: RoundState) -> set[str]:
        return st.selected - st.dropped

    def collected(self, st: RoundState) -> bool:
        """Tells the SecAgg round about nodes that dropped or were refused, lets a step whose
        deadline passed close, and says whether collection is over: the unmask step closed or
        the round was abandoned, and no upload is still being folded."""
        for nid in sorted((st.dropped | set(st.refused)) - self.gone):
            self.gone.add(nid)
            self.secure.drop(nid)
        self.secure.rnd.poll()
        return self.secure.rnd.finished and not st.uploads and st.folding == 0

    def deadline_applies(self) -> bool:
        # the masked step closes at the round's deadline; the unmask step after it has its own
        # (secagg_step_timeout_s)
        return self.secure.rnd.step != "unmask"

    def fold(self, session: UpdateSession) -> None:
        self.secure.fold(session.node_id, session.pieces(0))  # serialised by the SecAgg round

    def step(self, node: str, request: SecAggRequest) -> SecAggReply:
        if node not in self.nodes:
            raise NotSelectedError(f"node {node} is not selected for round {self.number}")
        return self.secure.step(node, request)

    def close(self, reason: str, stopping: str, shortfall: str) -> Outcome:
        """Unmask even when the round will not be committed: that closes the SecAgg round (or
        abandons it, saying at which step it stopped)."""
        started = time.monotonic()
        arrays, failure = finalize_secure(self.secure, reason)
        if not (failure or stopping or shortfall):  # the sum-only rules take the mean from here
            arrays, failure = self.strategy.from_mean(
                self.secure.specs, list(arrays), self.global_path
            )
        return Outcome(
            arrays,
            stopping or failure or shortfall,
            round(time.monotonic() - started, 6),
            self.secure.examples,
            self.secure.privacy,
        )
