"""A user-written strategy, loaded by import path in the registry tests."""

from __future__ import annotations

from fedhive.server.strategy.fedavg import FedAvg


def make(scale: float = 1.0) -> FedAvg:
    strategy = FedAvg()
    strategy.scale = scale  # type: ignore[attr-defined]
    return strategy


def not_a_strategy() -> object:
    return object()
