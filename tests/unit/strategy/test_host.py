"""The round engine's seam to its strategy: the optional per-round hooks and their defaults."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from fedhive.common.errors import AggregationError
from fedhive.server.aggregation import StrategyHost
from fedhive.server.strategy.fedavg import FedAvg

NODES = ["c", "a", "d", "b"]


class Hooks(FedAvg):
    def __init__(self, chosen: list[str], config: dict[str, Any]) -> None:
        super().__init__()
        self.chosen, self.config = chosen, config

    def select(self, round_: int, candidates: Sequence[str], k: int) -> list[str]:
        return self.chosen

    def configure(self, round_: int, config: Mapping[str, Any]) -> dict[str, Any]:
        return {**config, **self.config, "round": 99}

    def aggregate_metrics(self, items: Sequence[tuple[int, Mapping[str, float]]]) -> dict:
        return {"worst": min(m["loss"] for _, m in items)}


def test_defaults_are_fedavgs(tmp_path: Path) -> None:
    host = StrategyHost(FedAvg(), tmp_path)

    first = host.select(3, 0, NODES, 2, seed=5)
    again = host.select(3, 0, list(reversed(NODES)), 2, seed=5)

    assert first == again and len(first) == 2 and first <= set(NODES)
    assert host.configure(3, {"lr": 0.1, "round": 3}) == {"lr": 0.1, "round": 3}
    assert host.aggregate_metrics([(1, {"loss": 1.0}), (3, {"loss": 3.0})]) == {"loss": 2.5}


def test_a_strategy_picks_nodes_config_and_metrics_but_not_the_round(tmp_path: Path) -> None:
    host = StrategyHost(Hooks(["b"], {"lr": 0.01}), tmp_path)

    assert host.select(1, 0, NODES, 2, seed=0) == {"b"}
    assert host.configure(1, {"lr": 0.1, "round": 1, "evaluate": True}) == {
        "lr": 0.01,
        "round": 1,
        "evaluate": True,
    }
    assert host.aggregate_metrics([(1, {"loss": 1.0}), (3, {"loss": 3.0})]) == {"worst": 1.0}


@pytest.mark.parametrize(
    ("chosen", "config", "problem"),
    [
        ([], {}, "at least one of the connected nodes"),
        (["a", "zz"], {}, "not ['zz']"),
        (["a"], {"lr": float("nan")}, "non-scalar values for ['lr']"),
        (["a"], {"layers": [1, 2]}, "non-scalar values for ['layers']"),
    ],
)
def test_a_strategy_hook_returning_nonsense_is_refused_naming_it(
    tmp_path: Path, chosen: list[str], config: dict[str, Any], problem: str
) -> None:
    host = StrategyHost(Hooks(chosen, config), tmp_path)

    with pytest.raises(AggregationError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        host.select(1, 0, NODES, 2, seed=0)
        host.configure(1, {"round": 1})
