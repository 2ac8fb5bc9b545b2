"""The run's budget under distributed DP, over real node processes: the run stops before the
round whose epsilon (at the expected survivors' noise) would pass ``[dp] max_epsilon`` (a
resumed run's accountant: tests/unit/privacy/test_budget.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedhive.common.privacy import rdp
from fedhive.common.privacy.distributed import DistributedDPSettings, plan
from fedhive.server.coordinator import BudgetSpent
from tests.integration.harness import start_coordinator, start_node, wait_all
from tests.integration.test_distributed_dp import ARGS

NODES = 3
DDP = {"noise_multiplier": 1.0, "clip": 150.0, "bits": 16}
DELTA = 1e-5


def epsilon_after(rounds: int) -> float:
    """The accountant after ``rounds`` rounds of all 3 of 3 nodes (q = 1), as planned."""
    z = plan(DistributedDPSettings(**DDP), NODES, ARGS["params"]).delivered(NODES)
    return rdp.epsilon([(z, 1.0, rounds)], DELTA)


def test_the_distributed_budget_stops_the_run_before_the_round_that_would_pass_it(
    tmp_path: Path,
) -> None:
    # Prepare: a budget between the epsilon after 2 and after 3 rounds; 5 rounds asked for
    budget = (epsilon_after(2) + epsilon_after(3)) / 2
    dp = {"delta": DELTA, "max_epsilon": budget, "distributed": DDP}
    coord = start_coordinator(
        tmp_path, secure_aggregation="secagg+", dp=dp, rounds=5, min_nodes=NODES
    )
    procs = [
        start_node(coord.address, f"n{i}", seed=i, task_args=ARGS, log=tmp_path / f"n{i}.log")
        for i in range(NODES)
    ]

    # Execute
    with pytest.raises(BudgetSpent, match="round 3 would bring the distributed epsilon") as stop:
        coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: rounds 1 and 2 committed, round 3 never opened; the nodes were told the run is
    # over; the end is recorded with its reason
    assert "max_epsilon" in str(stop.value)
    assert codes == [0] * NODES, [(tmp_path / f"n{i}.log").read_text()[-2000:] for i in range(3)]
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().split("\n")
              if x]  # fmt: skip
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2] and all(e["committed"] for e in rounds)
    assert rounds[-1]["privacy"]["distributed"]["epsilon"] == pytest.approx(epsilon_after(2))
    assert events[-1]["event"] == "finished" and "max_epsilon" in events[-1]["reason"]
