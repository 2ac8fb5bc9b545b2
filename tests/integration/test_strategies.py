"""Strategies in a real federation: real coordinator, real node processes, real gRPC."""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedhive.common.config import ServerConfig
from fedhive.common.tasks import digits
from fedhive.server.coordinator import RunAborted
from fedhive.server.service.queue import FINISHED
from fedhive.server.service.service import Service
from fedhive.server.store import RunStore
from tests.integration.harness import start_coordinator, start_node, wait_all
from tests.integration.standing import events, run_settings, start_standing_node

HOSTILE = "tests.integration.byzantine_task:make_task"


RULES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedmedian": {},
    "multikrum": {"f": 1, "m": 3},
}
RUN_TIMEOUT_S = 300.0


def test_robust_rules_withstand_a_poisoning_member_that_breaks_fedavg(tmp_path: Path) -> None:
    # Prepare: 5 standing digits nodes (IID shares), one of which sends its weights sign-flipped
    # and scaled by 10 every round; a coordinator service with the same 3-round run queued under
    # each rule (one federation, its nodes started once, serves the three runs one after another)
    hostile, nodes = 1, 5
    server_dir, dirs = digits.prepare_simulation(tmp_path / "data", nodes, None, 0)
    service = Service(ServerConfig(address="127.0.0.1:0", insecure=True, progress=False), tmp_path)
    port = service.start()
    driver = threading.Thread(target=service.serve, name="service driver")
    driver.start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        runs = {
            name: service.submit(
                run_settings(
                    HOSTILE,
                    rounds=3,
                    min_nodes=nodes,
                    min_updates=nodes,
                    train={"epochs": 3},
                    eval_data=str(server_dir),
                    strategy=name,
                    strategy_args=args,
                    round_timeout_s=120.0,
                ),
                "test",
            ).run_id
            for name, args in RULES.items()
        }
        procs = [
            start_standing_node(
                tmp_path,
                port,
                f"n{i}",
                {HOSTILE: {"data_dir": d, "task_args": {"poison": int(i < hostile)}}},
                seed=i,
            )[0]
            for i, d in enumerate(dirs)
        ]

        # Execute: the same federation under three rules
        ended = {name: service.queue.wait_ended(r, RUN_TIMEOUT_S) for name, r in runs.items()}
    finally:
        service.request_stop()
        service.stop(grace=0.5)
        driver.join(30)
        for proc in procs:
            proc.send_signal(signal.SIGTERM) if proc.poll() is None else None
        codes = wait_all(procs, timeout=30)
    assert [e.state for e in ended.values()] == [FINISHED] * 3, ended
    assert codes == [0] * nodes, codes
    accuracy = {
        name: [e for e in events(tmp_path / "runs" / r) if e["event"] == "round"][-1][
            "server_evaluate"
        ]["accuracy"]
        for name, r in runs.items()
    }

    # Assert: FedAvg is wrecked; the median and MultiKrum learn as if the member were absent
    assert accuracy["fedavg"] < 0.5, accuracy
    assert accuracy["fedmedian"] > 0.85, accuracy
    assert accuracy["multikrum"] > 0.85, accuracy


def test_a_rule_short_of_updates_fails_the_round_with_its_reason(tmp_path: Path) -> None:
    # Prepare: Krum tolerating f=1 needs more than 4 updates; 3 nodes send theirs
    coord = start_coordinator(
        tmp_path, strategy="krum", strategy_args={"f": 1}, rounds=1, on_failed_round="stop"
    )
    procs = [start_node(coord.address, f"n{i}", i) for i in range(3)]

    # Execute
    with pytest.raises(RunAborted, match="round 1"):
        coord.join(timeout=120)
    wait_all(procs)

    # Assert: the round was not committed and its record says why; the model is round 0's
    events = RunStore(tmp_path / "run").events()
    failed = [e for e in events if e["event"] == "round"]
    assert failed and failed[0]["committed"] is False
    assert "Krum with f=1 needs more than 4 updates, got 3" in failed[0]["reason"]
    assert not (tmp_path / "run" / "models" / "round-0001.safetensors").exists()
    assert not list((tmp_path / "run" / "updates").glob("update-*"))


def test_fedadam_commits_its_moments_with_each_round(tmp_path: Path) -> None:
    # Prepare: the constant task (each node adds its own constant to the model)
    coord = start_coordinator(
        tmp_path, strategy="fedadam", strategy_args={"eta": 0.5}, rounds=2, min_nodes=3
    )
    procs = [start_node(coord.address, f"n{i}", i) for i in range(3)]

    # Execute
    coord.join(timeout=120)
    assert wait_all(procs) == [0, 0, 0]

    # Assert: moments next to each round's model, their digest in the committed state; the
    # model moved by Adam's step, not to the plain mean
    models = tmp_path / "run" / "models"
    for r in (1, 2):
        moments = load_file(str(models / f"strategy-{r:04d}.safetensors"))
        assert sorted({k.split("/")[0] for k in moments}) == ["m", "v"]
    resume = RunStore(tmp_path / "run").open_existing(
        coord.running.coordinator.config.model_dump(mode="json")
    )
    assert resume.strategy_state["steps"] == 2
    assert resume.strategy_state["_arrays"]["file"] == "strategy-0002.safetensors"
    before = load_file(str(models / "round-0000.safetensors"))
    after = load_file(str(models / "round-0001.safetensors"))
    # Adam's first step moves every value by eta * sqrt(1 - b2^2) / (1 - b1^2), whatever the mean
    expected = 0.5 * np.sqrt(1 - 0.99**2) / (1 - 0.9**2)
    for name in before:
        np.testing.assert_allclose(np.abs(after[name] - before[name]), expected, rtol=1e-3)


def test_a_user_strategy_chooses_the_nodes_and_the_metrics(tmp_path: Path) -> None:
    # Prepare: 3 nodes; the strategy takes the first two by id and counts its reports
    coord = start_coordinator(
        tmp_path,
        strategy="tests.integration.selecting_strategy:make",
        rounds=2,
        min_nodes=3,
    )
    procs = [start_node(coord.address, f"n{i}", i) for i in range(3)]

    # Execute
    history = coord.join(timeout=120)
    wait_all(procs)

    # Assert: every round went to the same two nodes, and its record holds the strategy's metrics
    rounds = [e for e in history if e["event"] == "round"]
    assert len(rounds) == 2 and all(e["committed"] for e in rounds)
    assert all(len(e["selected"]) == 2 for e in rounds)
    assert rounds[0]["selected"] == rounds[1]["selected"]
    assert all(e["train"] == {"reported": 2, "examples": e["examples"]} for e in rounds)
