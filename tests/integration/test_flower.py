"""Bring your Flower code: an unchanged Flower ClientApp as real fedhive node processes
(`fedhive client --flower-app`) against a real coordinator over loopback gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedhive.common.config import FLOWER_TASK
from tests.integration.harness import start_coordinator, wait_all

INIT = "tests.flower_apps.task:Net"
NODES = 2
ROUNDS = 3


def flower_node(address: str, app: str, index: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "client", "--server", address, "--insecure",
        "--name", f"site-{index}", "--device", "cpu", "--max-connect-attempts", "10",
        "--flower-app", app, "--task-arg", f"init={INIT}",
        "--task-arg", f"partition-id={index}", "--task-arg", f"num-partitions={NODES}",
    ]  # fmt: skip
    with open(log, "wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


@pytest.mark.parametrize(
    ("app", "accuracy"),
    [
        ("tests.flower_apps.client_app:app", "eval_acc"),
        ("tests.flower_apps.numpy_client:app", "accuracy"),
    ],
    ids=["message-api", "numpy-client"],
)
def test_flower_client_app_learns_as_fedhive_nodes(tmp_path: Path, app: str, accuracy: str) -> None:
    # Prepare: the coordinator's initial model from the app's own Net; its [train] table is the
    # app's run_config (local-epochs) and ConfigRecord (lr)
    coord = start_coordinator(
        tmp_path,
        task=FLOWER_TASK,
        task_args={"init": INIT},
        rounds=ROUNDS,
        min_nodes=NODES,
        train={"lr": 0.05, "local-epochs": 2},
        federated_evaluation=True,
    )
    logs = [tmp_path / f"site-{i}.log" for i in range(NODES)]

    # Execute
    procs = [flower_node(coord.address, app, i, log) for i, log in enumerate(logs)]
    history = coord.join(timeout=120)
    codes = wait_all(procs, timeout=60)

    # Assert: every round committed with both nodes' updates weighed by the app's num-examples;
    # the federated evaluation (the app's evaluate handler) climbs from chance
    assert codes == [0] * NODES, [log.read_text()[-2000:] for log in logs]
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["round"] for e in rounds] == list(range(1, ROUNDS + 1))
    assert all(e["committed"] and len(e["reported"]) == NODES for e in rounds)
    assert rounds[0]["examples"] == 719 + 718  # 80% of each half: the app's own count
    first = rounds[0]["evaluate"][accuracy]  # the initial model, before any training
    final = next(e for e in history if e["event"] == "evaluate")["evaluate"][accuracy]
    assert first < 0.3 < 0.8 < final, (first, final)


@pytest.mark.slow
def test_simulate_runs_a_flower_app_with_partitions(tmp_path: Path) -> None:
    # Execute: `fedhive simulate --flower-app`, each node given partition-id / num-partitions
    proc = subprocess.run(
        [
            sys.executable, "-m", "fedhive.common.cli", "simulate", "--insecure", "--no-progress",
            "--flower-app", "tests.flower_apps.client_app:app", "--task-arg", f"init={INIT}",
            "--nodes", "2", "--rounds", "2", "--train", "lr=0.05", "--train", "local-epochs=1",
            "--workdir", str(tmp_path),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip

    # Assert: both rounds committed with both halves of the digits (the app's own counts)
    assert proc.returncode == 0, proc.stdout
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    assert [e["examples"] for e in rounds] == [719 + 718] * 2
