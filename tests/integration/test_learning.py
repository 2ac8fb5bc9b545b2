"""Learning tasks end to end: real coordinator, real node processes, real gRPC, small models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

from fedhive.common.api.task import TaskContext, exchanged_state
from fedhive.common.errors import ConfigError
from fedhive.common.tasks import images, text
from tests.integration.harness import start_coordinator, start_node, wait_all

IMAGES = "fedhive.common.tasks.images:make_task"
TEXT = "fedhive.common.tasks.text:make_task"


def run_federation(
    tmp_path: Path, task: str, args: dict[str, Any], nodes: int, rounds: int, train: dict
) -> tuple[list[dict[str, Any]], list[Path]]:
    prepare = images.prepare_simulation if task == IMAGES else text.prepare_simulation
    server_dir, dirs = prepare(tmp_path / "data", nodes, 1.0, 0)
    coord = start_coordinator(
        tmp_path,
        task=task,
        task_args=args,
        rounds=rounds,
        min_nodes=nodes,
        train=train,
        eval_data=server_dir,
        federated_evaluation=True,
        round_timeout_s=240.0,
    )
    logs = [tmp_path / f"node{i}.log" for i in range(nodes)]
    procs = [
        start_node(coord.address, f"n{i}", i, task=task, task_args=args, data=d, log=log)
        for i, (d, log) in enumerate(zip(dirs, logs, strict=True))
    ]
    history = coord.join(timeout=600)
    codes = wait_all(procs, timeout=120)
    assert codes == [0] * nodes, [log.read_text()[-2000:] for log in logs]
    return history, logs


def test_cnn_on_images_learns_over_two_nodes(tmp_path: Path) -> None:
    # Prepare: the digits as 8x8 images, a tiny CNN (Adam, the task's default)
    args = {"image_size": 8, "width": 8, "depth": 1}

    # Execute
    history, _ = run_federation(tmp_path, IMAGES, args, nodes=2, rounds=3, train={"epochs": 2})

    # Assert: every round committed by both nodes; held-out accuracy beats chance by far
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3]
    assert all(sorted(e["nodes"]) == sorted(e["reported"]) for e in rounds)
    assert rounds[-1]["server_evaluate"]["accuracy"] > 0.5
    assert {"loss", "accuracy", "macro_f1"} <= set(rounds[-1]["server_evaluate"])
    final = [e for e in history if e["event"] == "evaluate"]
    assert final and final[0]["evaluate"]["accuracy"] > 0.5


def test_lora_federation_moves_only_adapters(tmp_path: Path) -> None:
    # Prepare: a tiny random encoder with LoRA
    args: dict[str, Any] = {"tiny": True}
    local = text.make_task(TaskContext(role="server", args=args))
    state = exchanged_state(local.build_model(), local)
    lora_bytes = sum(t.numel() * t.element_size() for t in state.values())

    # Execute
    history, _ = run_federation(tmp_path, TEXT, args, nodes=2, rounds=2, train={"steps": 2})

    # Assert: each update and each broadcast is exactly the adapters + head
    rounds = [e for e in history if e["event"] == "round"]
    assert all(e["committed"] for e in rounds)
    assert all(e["bytes_in"] == 2 * lora_bytes for e in rounds)
    final = load_file(str(tmp_path / "run" / "models" / "round-0002.safetensors"))
    assert sorted(final) == sorted(state)
    assert all("lora_" in name or "classifier" in name for name in final)


@pytest.mark.slow
def test_real_minilm_lora_two_nodes(tmp_path: Path) -> None:
    # Prepare: the real MiniLM weights from the package, LoRA r=8 on query/value
    args: dict[str, Any] = {}

    # Execute: two rounds of two steps each
    history, _ = run_federation(
        tmp_path, TEXT, args, nodes=2, rounds=2, train={"steps": 2, "batch_size": 8}
    )

    # Assert: under 2% of the full model travels; evaluation ran everywhere
    rounds = [e for e in history if e["event"] == "round"]
    assert all(e["committed"] for e in rounds)
    full_bytes = 22_713_216 * 4  # MiniLM-L6 encoder parameters, float32
    assert all(e["bytes_in"] < 2 * 0.02 * full_bytes for e in rounds)
    assert rounds[-1]["server_evaluate"]["examples"] == 180


def test_a_bad_training_config_is_refused_before_the_run_exists_naming_the_field(
    tmp_path: Path,
) -> None:
    # Prepare: a misspelled training key, which every node would refuse at round 1
    args = {"image_size": 8, "width": 4, "depth": 1}

    # Execute
    with pytest.raises(ConfigError) as info:
        start_coordinator(
            tmp_path, task=IMAGES, task_args=args, rounds=1, train={"learning_rate": 0.1}
        )

    # Assert: the task's own message, and no run directory to start over from
    assert "learning_rate: unknown training setting" in str(info.value)
    assert not (tmp_path / "run" / "run.sqlite").exists()
