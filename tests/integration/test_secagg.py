"""SecAgg+ end to end: a real coordinator, real node processes, real gRPC, real dropouts.

The constant task makes node ``n<i>`` add ``1 + i`` and report ``100 + i`` examples, so plain
FedAvg of any set of nodes is known in closed form. A secure round quantizes: each node's
rounding is below one grid step, so the unmasked mean of ``n`` nodes with ``W`` examples in all is
within ``n step / W`` of the exact mean (plus float32 rounding of the stored model), per round.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedhive.common.secagg.quantize import QuantConfig
from fedhive.common.tasks import digits
from fedhive.server.coordinator import RunAborted
from tests.integration.harness import start_coordinator, start_node, wait_all

ARGS = {"params": 1000, "tensors": 3}
ROUNDS = 5
SIZES = [334, 333, 333]
SECURE = {
    "secure_aggregation": "secagg+",
    "secagg_clip": 32.0,
    "secagg_bits": 16,
    "secagg_max_weight": 1024,
    "heartbeat_interval_s": 0.3,
    "heartbeat_timeout_s": 2.0,
}
QUANT = QuantConfig(clip=32.0, bits=16, max_weight=1024)
F32_ROUNDING = 32.0 * 2.0**-24  # float32 rounding of a stored value below the clip range


class Killer:
    """Round listener: SIGKILLs the victim node at a chosen moment of the first round, from
    ``round_`` on, in which the victim was selected (a slow or briefly silent node may miss a
    round's selection on a loaded machine)."""

    def __init__(self, round_: int, on: str, victim_prefix: str) -> None:
        self.round, self.on, self.prefix = round_, on, victim_prefix
        self.victim_selected = False
        self.victim: subprocess.Popen[bytes] | None = None
        self.killed_in: int | None = None
        self.selections: list[tuple[int, str, list[str]]] = []
        self.lock = threading.Lock()

    def _kill(self, round_: int, moment: str) -> None:
        with self.lock:
            if self.victim is None or self.killed_in is not None:
                return
            if round_ >= self.round and moment == self.on and self.victim_selected:
                self.victim.send_signal(signal.SIGKILL)
                self.victim.wait()
                self.killed_in = round_

    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        self.selections.append((round_, kind, list(selected)))
        self.victim_selected = any(u.startswith(self.prefix) for u in selected)
        self._kill(round_, "opened")

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        self._kill(round_, "update")

    def round_closed(self, event: Mapping[str, Any]) -> None:
        pass


def seed_of(node_id: str) -> int:
    return int(node_id.rsplit("-", 1)[0].removeprefix("n"))


def expected_model(rounds: list[dict[str, Any]]) -> tuple[list[np.ndarray], float]:
    """Plain FedAvg (float64) of each round's reported nodes, and the quantization error bound."""
    model = [np.full(size, float(k)) for k, size in enumerate(SIZES)]
    bound = 0.0
    for event in rounds:
        seeds = [seed_of(u) for u in event["reported"]]
        weights = np.array([100.0 + s for s in seeds])
        deltas = np.array([1.0 + s for s in seeds])
        step = float((weights * deltas).sum() / weights.sum())
        model = [m + step for m in model]
        bound += len(seeds) * QUANT.step / weights.sum() + F32_ROUNDING
    return model, bound


def final_model(tmp_path: Path, round_: int) -> list[np.ndarray]:
    final = load_file(str(tmp_path / "run" / "models" / f"round-{round_:04d}.safetensors"))
    return [final[f"weights.{k}"] for k in range(len(SIZES))]


def test_five_nodes_one_killed_mid_round_match_fedavg_of_the_survivors(tmp_path: Path) -> None:
    # Prepare: 5 nodes, secure aggregation; node n2 is killed once the first masked upload of
    # the first round from 2 on that selected it was folded (the others are between their
    # uploads and the unmask step).
    # n2 joins first: the run (4 nodes suffice) could otherwise be over before a slow start
    # joined it
    killer = Killer(2, "update", victim_prefix="n2-")
    coord = start_coordinator(tmp_path, killer, rounds=ROUNDS, min_nodes=4, **SECURE)

    def node(i: int) -> subprocess.Popen[bytes]:
        return start_node(coord.address, f"n{i}", i, task_args=ARGS, log=tmp_path / f"n{i}.log")

    victim = node(2)
    coord.wait_joined("n2")
    procs = [node(0), node(1), victim, node(3), node(4)]
    killer.victim = victim

    # Execute
    history = coord.join(timeout=240)
    codes = wait_all(procs)

    # Assert: all rounds committed; n2 was killed in round 2 and contributes nothing after
    logs = [(tmp_path / f"n{i}.log").read_text() for i in range(5)]
    k = killer.killed_in
    assert k is not None and 2 <= k < ROUNDS, (killer.selections, logs)
    assert codes[:2] + codes[3:] == [0, 0, 0, 0], logs
    rounds = [e for e in history if e["event"] == "round"]
    assert [(e["round"], e["committed"]) for e in rounds] == [
        (r, True) for r in range(1, ROUNDS + 1)
    ]
    assert len(rounds[0]["reported"]) >= 4  # round 1 may start before the fifth node joined
    victim = [u for u in rounds[k - 1]["selected"] if seed_of(u) == 2]
    assert victim, f"n2 took part in round {k}"
    killed = rounds[k - 1]
    gone = set(killed["dropped"]) | set(killed["refused"]) | set(killed["reported"])
    assert victim[0] in gone
    assert all(victim[0] not in e["reported"] for e in rounds[k:])
    # the example count travelled masked; the coordinator learns only the sum
    assert rounds[0]["examples"] == sum(100 + seed_of(u) for u in rounds[0]["reported"])
    # the model equals plain FedAvg of each round's survivors, within the quantization bound
    expected, bound = expected_model(rounds)
    for got, want in zip(final_model(tmp_path, ROUNDS), expected, strict=True):
        assert got.dtype == np.float32
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound


def test_secure_rounds_without_dropouts_equal_plain_fedavg(tmp_path: Path) -> None:
    # Prepare
    coord = start_coordinator(tmp_path, rounds=2, min_nodes=3, **SECURE)
    procs = [start_node(coord.address, f"n{i}", seed=i, task_args=ARGS) for i in range(3)]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: the closed form of test_end_to_end, within the quantization bound
    assert codes == [0, 0, 0]
    rounds = [e for e in history if e["event"] == "round"]
    assert all(e["committed"] and len(e["reported"]) == 3 for e in rounds)
    examples = np.array([100.0, 101.0, 102.0])
    step = float((examples * np.array([1.0, 2.0, 3.0])).sum() / examples.sum())
    bound = 2 * (3 * QUANT.step / examples.sum() + F32_ROUNDING)
    for k, got in enumerate(final_model(tmp_path, 2)):
        assert got.shape == (SIZES[k],)
        assert np.max(np.abs(got.astype(np.float64) - (k + 2 * step))) <= bound
        assert np.max(np.abs(got - (k + 2 * step))) > 0  # quantized, not the plain path
    # what a node uploaded is one masked word per parameter, plus the count word
    assert all(e["bytes_in"] == 3 * 4 * 1001 for e in rounds)


def test_a_server_optimizer_steps_from_the_secure_mean(tmp_path: Path) -> None:
    # Prepare: FedAvgM with server learning rate 2 and no momentum: x <- x + 2 (mean - x)
    coord = start_coordinator(
        tmp_path,
        rounds=2,
        min_nodes=3,
        strategy="fedavgm",
        strategy_args={"server_learning_rate": 2.0},
        **SECURE,
    )
    procs = [start_node(coord.address, f"n{i}", seed=i, task_args=ARGS) for i in range(3)]

    # Execute
    coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: twice FedAvg's step each round, within twice the quantization bound
    assert codes == [0, 0, 0]
    examples = np.array([100.0, 101.0, 102.0])
    step = float((examples * np.array([1.0, 2.0, 3.0])).sum() / examples.sum())
    bound = 2 * 2 * (3 * QUANT.step / examples.sum() + F32_ROUNDING)
    for k, got in enumerate(final_model(tmp_path, 2)):
        assert np.max(np.abs(got.astype(np.float64) - (k + 4 * step))) <= bound


def test_keys_are_exchanged_while_nodes_train_longer_than_a_step_timeout(
    tmp_path: Path,
) -> None:
    # Prepare: training takes 3 s, a secagg step may take 1 s: the key exchange must run while
    # the nodes train (before, nodes advertised after training and the round was abandoned)
    settings = {**SECURE, "secagg_step_timeout_s": 1.0}
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=3, round_timeout_s=60.0, **settings)
    logs = [tmp_path / f"n{i}.log" for i in range(3)]
    procs = [
        start_node(coord.address, f"n{i}", seed=i, task_args={**ARGS, "train_s": 3.0}, log=logs[i])
        for i in range(3)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: committed with all three, each within the quantization bound of plain FedAvg
    texts = [p.read_text() for p in logs]
    assert codes == [0, 0, 0], texts
    (event,) = [e for e in history if e["event"] == "round"]
    assert event["committed"] and len(event["reported"]) == 3, event
    assert event["duration_s"] >= 3.0
    expected, bound = expected_model([event])
    for got, want in zip(final_model(tmp_path, 1), expected, strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound
    assert all("waited 0.0" in text for text in texts), texts  # the mask was ready in time


def test_fewer_than_t_survivors_leave_the_model_untouched(tmp_path: Path) -> None:
    # Prepare: 3 nodes and t = 3; one is killed as round 1 opens
    killer = Killer(1, "opened", victim_prefix="n0-")
    coord = start_coordinator(
        tmp_path,
        killer,
        rounds=2,
        min_nodes=3,
        on_failed_round="stop",
        secagg_threshold=3,
        **SECURE,
    )
    procs = [start_node(coord.address, f"n{i}", seed=i, task_args=ARGS) for i in range(3)]
    killer.victim = procs[0]

    # Execute
    with pytest.raises(RunAborted, match="round 1 failed"):
        coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: the round was not committed, and why is logged; the global model is the initial one
    assert codes[1:] == [0, 0]
    event = coord.running.coordinator.history[-1]
    assert event["round"] == 1 and not event["committed"]
    assert "secure aggregation" in event["reason"] and "t=3" in event["reason"]
    models = sorted(p.name for p in (tmp_path / "run" / "models").iterdir())
    assert models == ["round-0000.safetensors"]
    current = coord.running.coordinator.global_model()  # raw little-endian bytes per tensor
    for k, arr in enumerate(current):
        values = np.frombuffer(arr.tobytes(), dtype="<f4")
        assert np.array_equal(values, np.full(SIZES[k], float(k), dtype=np.float32))


def test_a_node_that_fails_locally_declines_and_the_round_does_not_wait(tmp_path: Path) -> None:
    # Prepare: max_weight 102, so n3 (103 examples) cannot quantize its update (after the key
    # exchange, which runs while it trains: it declines, its masks are recovered from its
    # shares). Steps wait up to 120 s.
    settings = {**SECURE, "secagg_max_weight": 102, "secagg_step_timeout_s": 120.0}
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=4, round_timeout_s=120.0, **settings)
    logs = [tmp_path / f"n{i}.log" for i in range(4)]
    procs = [
        start_node(coord.address, f"n{i}", seed=i, task_args=ARGS, log=logs[i]) for i in range(4)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: committed from the three others long before any step deadline; n3 said why
    assert codes == [0, 0, 0, 0], [p.read_text() for p in logs]
    (event,) = [e for e in history if e["event"] == "round"]
    assert event["committed"] and sorted(seed_of(u) for u in event["reported"]) == [0, 1, 2]
    (declined,) = [u for u in event["refused"] if seed_of(u) == 3]
    assert "declined: secure aggregation failed" in event["refused"][declined]
    assert "max_weight=102" in event["refused"][declined]
    assert event["duration_s"] < 60
    expected, bound = expected_model([event])
    for got, want in zip(final_model(tmp_path, 1), expected, strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound


def test_a_node_whose_update_is_not_finite_declines_and_the_round_commits(tmp_path: Path) -> None:
    # Prepare: n3's training yields NaN (delta = nan); it finds out while quantizing, after the
    # key exchange (before, the node crashed and the others waited for it until the deadline)
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=4, round_timeout_s=120.0, **SECURE)
    logs = [tmp_path / f"n{i}.log" for i in range(4)]
    procs = [
        start_node(
            coord.address,
            f"n{i}",
            seed=i,
            task_args={**ARGS, "delta": "nan"} if i == 3 else ARGS,
            log=logs[i],
        )
        for i in range(4)
    ]

    # Execute
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: committed from the three others; n3 declined and said why; the model is finite
    assert codes == [0, 0, 0, 0], [p.read_text() for p in logs]
    (event,) = [e for e in history if e["event"] == "round"]
    assert event["committed"] and sorted(seed_of(u) for u in event["reported"]) == [0, 1, 2]
    (declined,) = [u for u in event["refused"] if seed_of(u) == 3]
    assert "non-finite" in event["refused"][declined]
    expected, bound = expected_model([event])
    for got, want in zip(final_model(tmp_path, 1), expected, strict=True):
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound


def test_a_secure_round_trains_a_built_in_task_that_validates_its_config(tmp_path: Path) -> None:
    # Prepare: the digits task refuses training settings it does not know; the secure round's
    # parameters travel in the same task config
    task = "fedhive.common.tasks.digits:make_task"
    _, dirs = digits.prepare_simulation(tmp_path / "data", 3, None, 0)
    coord = start_coordinator(
        tmp_path, task=task, task_args={}, rounds=1, min_nodes=3, on_failed_round="stop",
        train={"epochs": 1}, **SECURE,
    )  # fmt: skip
    logs = [tmp_path / f"n{i}.log" for i in range(3)]
    procs = [
        start_node(coord.address, f"n{i}", seed=i, task=task, task_args={}, data=d, log=log)
        for i, (d, log) in enumerate(zip(dirs, logs, strict=True))
    ]

    # Execute
    history = coord.join(timeout=180)
    codes = wait_all(procs)

    # Assert: the nodes trained and the round committed from all three masked updates
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    (event,) = [e for e in history if e["event"] == "round"]
    assert event["committed"] and len(event["reported"]) == 3
