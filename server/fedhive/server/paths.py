"""How a round's checked updates become the new global model: the aggregation path. No grpc.

The round engine drives every round the same way; what differs between a plain and a SecAgg+
round lives behind one interface, :class:`AggregationPath`, with two implementations:

- :class:`~fedhive.server.plain_path.PlainPath`: each checked update, staged in the spool, is
  folded into the strategy; the strategy's ``finalize`` gives the new model.
- :class:`~fedhive.server.secure_path.SecurePath`: the SecAgg+ round (key exchange, a masked
  uint32 fold per upload, unmask, dequantize) gives the example-weighted mean, and the strategy
  sees only that mean (``from_mean``).

(The final federated evaluation collects metrics only:
:class:`~fedhive.server.plain_path.CollectPath`.) :class:`Paths`, made once per run from the
config, checks that the strategy composes with it and opens each round's path; the engine never
asks which one it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from fedhive.common.config import ServerConfig
from fedhive.common.errors import ConfigError
from fedhive.common.wire.messages import TaskKind
from fedhive.common.wire.tensors import TensorSpec
from fedhive.server.aggregation import StrategyHost
from fedhive.server.aggregation_path import AggregationPath
from fedhive.server.plain_path import CollectPath, PlainPath
from fedhive.server.registry import NodeRecord
from fedhive.server.secure import DPInputs, open_secure_round
from fedhive.server.secure_path import SecurePath


class Paths:
    """Opens each round's aggregation path; made once per run (refuses a strategy that cannot
    compose with the run's secure aggregation)."""

    def __init__(
        self, config: ServerConfig, specs: Sequence[TensorSpec], strategy: StrategyHost
    ) -> None:
        self.secure = config.secure_aggregation == "secagg+"
        if config.secure_aggregation != "none" and getattr(
            strategy.aggregator, "needs_updates", False
        ):
            raise ConfigError(
                f"secure_aggregation = {config.secure_aggregation!r} yields only the sum of "
                "updates the coordinator never sees; the strategy "
                f"{type(strategy.aggregator).__name__} must see each update"
            )
        self.config = config
        self.specs = list(specs)
        self.strategy = strategy

    def eligible(self, kind: TaskKind, nodes: Sequence[NodeRecord]) -> list[NodeRecord]:
        """The connected nodes that can take part (a secure round: those with an identity key)."""
        if kind == TaskKind.TRAIN and self.secure:
            return [n for n in nodes if n.identity_key]
        return list(nodes)

    def open(
        self,
        kind: TaskKind,
        number: int,
        attempt: int,
        chosen: Sequence[NodeRecord],
        deadline: float,
        global_path: Path,
        dp: DPInputs | None = None,
    ) -> AggregationPath:
        """The path of round ``number``'s ``attempt`` over the ``chosen`` nodes (``global_path``:
        the committed model it starts from). Raises ConfigError when it cannot run."""
        if kind != TaskKind.TRAIN:
            return CollectPath()
        if not self.secure:
            return PlainPath(self.strategy, self.specs, global_path)
        keys = {n.node_id: n.identity_key for n in chosen}
        certs = {n.node_id: n.identity_cert for n in chosen if n.identity_cert}
        try:
            secure = open_secure_round(
                self.config,
                self.specs,
                number,
                attempt,
                keys,
                certs,
                masked_deadline=deadline,
                dp=dp,
            )
        except ConfigError as exc:
            raise ConfigError(f"secure aggregation cannot run: {exc}") from exc
        return SecurePath(number, secure, self.strategy, global_path)
