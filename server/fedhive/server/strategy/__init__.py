"""Aggregation strategies: one per file, each named after its paper."""

from fedhive.server.strategy.base import Aggregator, StagedUpdate
from fedhive.server.strategy.fedavg import FedAvg

__all__ = ["Aggregator", "FedAvg", "StagedUpdate"]
