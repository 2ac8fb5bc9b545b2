"""A real coordinator on a loopback port and real node processes, over real gRPC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.integration.harness import start_coordinator, start_node, wait_all


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"broadcast_memory_bytes": 0},
        {"spool_memory_bytes": 4000, "spool_wait_s": 60.0},
        {"spool_memory_bytes": 0},
    ],
    ids=[
        "defaults",
        "model-streamed-from-checkpoint",
        "uploads-queue-for-one-memory-spool",
        "uploads-spooled-to-files",
    ],
)
def test_three_nodes_three_rounds_match_independent_fedavg(
    tmp_path: Path, settings: dict[str, object]
) -> None:
    # Prepare: constant task, node i adds 1 + i and reports 100 + i examples; the global model
    # is kept as encoded chunks, or (limit 0) read from its checkpoint file for every pull; the
    # updates (4,000 bytes each) are staged in memory, one at a time (the others' streams wait for
    # the buffer), or in files
    coord = start_coordinator(tmp_path, rounds=3, min_nodes=3, **settings)
    procs = [
        start_node(coord.address, f"n{i}", seed=i, log=tmp_path / f"node{i}.log") for i in range(3)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: every round committed with all three nodes
    assert codes == [0, 0, 0], [(tmp_path / f"node{i}.log").read_text() for i in range(3)]
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3]
    assert all(e["committed"] and len(e["reported"]) == 3 for e in rounds)
    assert all(e["examples"] == 100 + 101 + 102 for e in rounds)
    # the final model equals FedAvg computed independently (float64 reference)
    examples = np.array([100.0, 101.0, 102.0])
    deltas = np.array([1.0, 2.0, 3.0])
    step = float((examples * deltas).sum() / examples.sum())
    final = load_file(str(tmp_path / "run" / "models" / "round-0003.safetensors"))
    sizes = [334, 333, 333]
    for k, size in enumerate(sizes):
        got = final[f"weights.{k}"]
        assert got.dtype == np.float32 and got.shape == (size,)
        np.testing.assert_allclose(got, np.full(size, k + 3 * step), rtol=1e-6, atol=1e-6)
    # the run directory holds one model per round and one record per round
    models = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())
    assert models == [f"round-{r:04d}.safetensors" for r in range(4)]
    lines = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["start", "round", "round", "round", "finished"]
    assert all(e["bytes_in"] == 3 * 4000 and e["bytes_out"] == 3 * 4000 for e in lines[1:4])


def test_bf16_model_travels_bit_exactly_and_averages(tmp_path: Path) -> None:
    # Prepare: a bfloat16 model; deltas 1 and 2 with 100 and 101 examples
    args = {"params": 64, "tensors": 2, "dtype": "bfloat16"}
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2, task_args=args)
    procs = [start_node(coord.address, f"b{i}", seed=i, task_args=args) for i in range(2)]

    # Execute
    coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: (100*1 + 101*2)/201 = 1.5025 added to k, rounded to bf16
    assert codes == [0, 0]
    import torch
    from safetensors.torch import load_file as load_torch

    final = load_torch(str(tmp_path / "run" / "models" / "round-0001.safetensors"))
    step = (100 * 1.0 + 101 * 2.0) / 201
    for k in range(2):
        t = final[f"weights.{k}"]
        assert t.dtype == torch.bfloat16
        expected = torch.full((32,), k + step, dtype=torch.float32).to(torch.bfloat16)
        assert torch.equal(t, expected)


@pytest.mark.slow
def test_simulate_command_runs_digits_quickstart(tmp_path: Path) -> None:
    # Execute: the README's quickstart, shortened
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedhive.common.cli",
            "simulate",
            "--nodes",
            "2",
            "--rounds",
            "2",
            "--workdir",
            str(tmp_path),
            "--no-progress",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, as in a log file: the order of lines shows
        text=True,
        timeout=300,
    )

    # Assert
    assert proc.returncode == 0, proc.stdout
    summary = proc.stdout.index("fedhive run summary")
    assert "left" not in proc.stdout[summary:]  # the nodes' leaving is logged before the summary
    assert proc.stdout[:summary].count("left (node stopping)") == 2
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    rounds = [e for e in events if e["event"] == "round"]
    assert len(rounds) == 2 and all(e["committed"] for e in rounds)
    assert "accuracy" in rounds[-1]["server_evaluate"]
    assert any(e["event"] == "evaluate" for e in events)


def test_a_node_whose_training_fails_declines_and_the_round_goes_on(tmp_path: Path) -> None:
    # Prepare: the node with seed 2 fails in fit(); the round may commit with two updates and
    # would otherwise wait 120 s for it
    args = {"params": 1000, "tensors": 3}
    coord = start_coordinator(
        tmp_path, rounds=1, min_nodes=3, min_updates=2, round_timeout_s=120.0, task_args=args
    )
    logs = [tmp_path / f"node{s}.log" for s in (2, 3, 4)]
    procs = [
        start_node(coord.address, f"s{s}", seed=s, task_args={**args, "fail_fit": s == 2}, log=log)
        for s, log in zip((2, 3, 4), logs, strict=True)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: committed from the two others at once; the failing node said why and stopped
    (event,) = [e for e in history if e["event"] == "round"]
    assert event["committed"] and len(event["reported"]) == 2
    ((node, reason),) = event["refused"].items()
    assert node.startswith("s2-")
    assert reason.startswith("declined: training failed: TaskError: constant task: fit() fails")
    assert event["duration_s"] < 60
    assert codes[0] != 0 and codes[1:] == [0, 0], [p.read_text() for p in logs]
    assert "declined" in logs[0].read_text()
