"""A federation with its nodes on a CUDA GPU: real coordinator, real gRPC, one node process and one
in-process node (to look at its model), the digits task."""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from safetensors.torch import load_file

from fedhive.client.node import Node
from fedhive.client.transport import GrpcTransport
from fedhive.common.config import ClientConfig
from fedhive.common.tasks import digits
from tests.integration.harness import start_coordinator, start_node, wait_all

DIGITS = "fedhive.common.tasks.digits:make_task"
ROUNDS = 3


def test_model_stays_on_the_gpu_across_rounds_and_learns(tmp_path: Path) -> None:
    # Prepare: held-out data on the coordinator, two nodes with their own shares
    server_dir, dirs = digits.prepare_simulation(tmp_path / "data", 2, None, 0)
    coord = start_coordinator(
        tmp_path,
        task=DIGITS,
        task_args={},
        rounds=ROUNDS,
        min_nodes=2,
        train={"epochs": 1},
        eval_data=server_dir,
        federated_evaluation=True,
        round_timeout_s=120.0,
    )
    log = tmp_path / "node-0.log"
    proc = start_node(
        coord.address, "gpu-0", 0, task=DIGITS, task_args={}, data=dirs[0], log=log, device="cuda"
    )
    config = ClientConfig(
        server=coord.address,
        task=DIGITS,
        data_dir=dirs[1],
        name="gpu-1",
        device="cuda",
        seed=1,
        insecure=True,
        max_connect_attempts=10,
    )
    transport = GrpcTransport(config.server)
    node = Node(config, transport)
    before = {name: t.data_ptr() for name, t in node.state.items()}
    thread = threading.Thread(target=node.run, name="gpu-node")

    # Execute
    thread.start()
    history = coord.join(timeout=300)
    thread.join(timeout=60)
    transport.close()
    codes = wait_all([proc], timeout=60)

    # Assert: both nodes trained every round; accuracy rose; the in-process node's model never
    # left the GPU (same storage every round) and holds the final global model bit for bit
    assert not thread.is_alive() and codes == [0], log.read_text()[-2000:]
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["round"] for e in rounds] == list(range(1, ROUNDS + 1))
    assert all(len(e["reported"]) == 2 for e in rounds)
    accuracy = [e["server_evaluate"]["accuracy"] for e in rounds]
    assert accuracy[-1] > 0.8 and accuracy[-1] > accuracy[0] + 0.2, accuracy
    assert node.stats.rounds_trained == ROUNDS
    assert all(t.is_cuda for t in node.model.parameters())
    assert {name: t.data_ptr() for name, t in node.state.items()} == before
    final = load_file(str(tmp_path / "run" / "models" / f"round-{ROUNDS:04d}.safetensors"))
    assert sorted(final) == sorted(node.state)
    assert all(torch.equal(final[n], node.state[n].cpu()) for n in final)
