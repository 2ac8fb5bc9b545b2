"""Bring your Flower code: an unchanged Flower ClientApp as real fedhive node processes
(`fedhive client --flower-app`) against a real coordinator over loopback gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from fedhive.common.cli.certs import Authority
from fedhive.common.config import FLOWER_TASK
from tests.flower_apps.task import Net
from tests.integration.flower_runtime import flower_node
from tests.integration.harness import start_coordinator, wait_all

INIT = "tests.flower_apps.task:Net"
NODES = 2
ROUNDS = 3
TOLERANCE = 1e-6  # largest absolute difference from Flower's global model (measured 1.8e-7)


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


# ---------------------------------------------------------------- the same app under Flower


class LoopbackGrid:
    """What Flower's ServerApp + strategy need of a Grid (node ids, send and receive), with each
    node's ClientApp called in this process with its own Context: Flower's simulation without
    its Ray backend (Ray is not installed here) and without serialization."""

    def __init__(self, app: Any, contexts: dict[int, Any]) -> None:
        self.app, self.contexts = app, contexts

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        return [self.app(msg, self.contexts[msg.metadata.dst_node_id]) for msg in messages]


def run_under_flower(run_config: dict[str, Any]) -> dict[str, np.ndarray]:
    """The Flower ServerApp (tests/flower_apps/server_app.py) with FedAvg over NODES ClientApps;
    its final model as it saves it (the run config's final-model)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from flwr.app import Context, RecordDict
        from flwr.supercore.task_identity import TaskIdentity

        from tests.flower_apps.client_app import app as client_app
        from tests.flower_apps.server_app import app as server_app

        saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        try:
            contexts = {
                i + 1: Context(1, i + 1, {"partition-id": i, "num-partitions": NODES},
                               RecordDict(), dict(run_config))
                for i in range(NODES)
            }  # fmt: skip
            grid = LoopbackGrid(client_app, contexts)
            server_app(grid, Context(1, 0, {}, RecordDict(), dict(run_config)))  # type: ignore[arg-type]
        finally:
            TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    state = torch.load(Path(run_config["final-model"]))
    return {name: t.numpy() for name, t in state.items()}


def test_same_global_model_as_flowers_own_fedavg_after_three_rounds(tmp_path: Path) -> None:
    # Prepare: one thread everywhere (the same float reduction order in every training step);
    # the same initial model on both sides: Net() under torch.manual_seed(0) (the ServerApp's
    # seed, fedhive's --seed)
    run_config = {
        "fraction-train": 1.0, "fraction-evaluate": 0.0, "min-nodes": NODES,
        "num-server-rounds": ROUNDS, "lr": 0.05, "local-epochs": 1, "seed": 0,
        "final-model": str(tmp_path / "final_model.pt"),
    }  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flower = run_under_flower(run_config)
        coord = start_coordinator(
            tmp_path, task=FLOWER_TASK, task_args={"init": INIT}, rounds=ROUNDS, min_nodes=NODES,
            train={"lr": 0.05, "local-epochs": 1}, seed=0,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    logs = [tmp_path / f"site-{i}.log" for i in range(NODES)]

    # Execute: the same ClientApp as fedhive node processes
    procs = [
        flower_node(coord.address, "tests.flower_apps.client_app:app", i, log, "--threads", "1")
        for i, log in enumerate(logs)
    ]
    coord.join(timeout=120)
    assert wait_all(procs, timeout=60) == [0] * NODES, [log.read_text()[-2000:] for log in logs]

    # Assert: the same global model, to float32 rounding (Flower adds float32 updates each scaled
    # by its share, fedhive sums in float64 and divides; three rounds carry the difference along)
    ours = load_file(str(tmp_path / "run" / "models" / f"round-{ROUNDS:04d}.safetensors"))
    assert sorted(ours) == sorted(flower)
    worst = max(float(np.max(np.abs(ours[n] - flower[n]))) for n in flower)
    assert worst < TOLERANCE, worst


def test_flower_app_under_mutual_tls_and_secagg_plus(tmp_path: Path) -> None:
    # Prepare: a consortium CA with one bundle per site; SecAgg+ over three sites (its masks
    # need at least three); the updates quantized within a clip far above the CNN's weights
    sites = [f"site-{i}" for i in range(3)]
    pki = Authority(tmp_path / "pki")
    pki.bootstrap("Flower Consortium", sites, dns=["localhost"], ips=["127.0.0.1"])
    coord = start_coordinator(
        tmp_path, task=FLOWER_TASK, task_args={"init": INIT}, rounds=2, min_nodes=3,
        train={"lr": 0.05, "local-epochs": 2}, federated_evaluation=True, insecure=False,
        tls_dir=pki.server_dir, secure_aggregation="secagg+", secagg_clip=32.0, secagg_bits=16,
        secagg_max_weight=1024, on_failed_round="stop",
    )  # fmt: skip
    logs = [tmp_path / f"{site}.log" for site in sites]

    # Execute: each site with only its own bundle
    app = "tests.flower_apps.client_app:app"
    procs = [
        flower_node(coord.address, app, i, log, "--tls-dir", str(pki.node_dir(site)), nodes=3)
        for i, (site, log) in enumerate(zip(sites, logs, strict=True))
    ]
    history = coord.join(timeout=180)
    codes = wait_all(procs, timeout=60)

    # Assert: both secure rounds committed from the three certified sites; the model learned
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    rounds = [e for e in history if e["event"] == "round"]
    assert all(e["committed"] and sorted(e["reported"]) == sites for e in rounds), rounds
    final = next(e for e in history if e["event"] == "evaluate")["evaluate"]["eval_acc"]
    assert rounds[0]["evaluate"]["eval_acc"] < 0.3 < 0.7 < final
    # each site uploaded one masked word per parameter plus the count word: the secure path
    params = sum(t.numel() for t in Net().state_dict().values())
    assert all(e["bytes_in"] == 3 * 4 * (params + 1) for e in rounds)
