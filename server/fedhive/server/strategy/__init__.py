"""Aggregation strategies: one per file, each named after its paper; ``registry`` names them."""

from fedhive.server.strategy.base import Aggregator, RobustRule, StagedUpdate, UpdateBlocks
from fedhive.server.strategy.fedavg import FedAvg

__all__ = ["Aggregator", "FedAvg", "RobustRule", "StagedUpdate", "UpdateBlocks"]
