"""A user strategy that picks its nodes and reports its own metrics (loaded by import path)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fedhive.server.strategy.fedavg import FedAvg


class FirstTwo(FedAvg):
    """FedAvg over the two first nodes by id; the metric record: how many reported."""

    def select(self, round_: int, candidates: Sequence[str], k: int) -> list[str]:
        return sorted(candidates)[:2]

    def aggregate_metrics(self, items: Sequence[tuple[int, Mapping[str, float]]]) -> dict:
        return {"reported": len(items), "examples": sum(n for n, _ in items)}


def make() -> FirstTwo:
    return FirstTwo()
