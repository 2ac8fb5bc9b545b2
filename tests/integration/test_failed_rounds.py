"""Rounds that are not committed leave no trace: the model and the strategy's state are those of
the last committed round, so a live retry steps a server optimizer once, as a resumed run does.
A round every node declined or left fails at once, and its retry does not wait for them."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.coordinator import RunAborted
from tests.integration.adversary import Adversary
from tests.integration.harness import channel, start_coordinator, start_node, wait_all

HUGE = 1e38  # finite and foldable (float32); its weighted mean times the server lr is not
LR = 100.0


def test_a_non_finite_aggregate_leaves_the_server_optimizer_as_committed(tmp_path: Path) -> None:
    # Prepare: FedAvgM with momentum (a velocity moment and a step count) and two raw nodes:
    # alice adds 1 to the model each round; mallory sends HUGE in round 1's first attempt, whose
    # server step then overflows to inf (not committed), and declines the retry
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=2,
        min_updates=1,
        strategy="fedavgm",
        strategy_args={"server_learning_rate": LR, "server_momentum": 0.5},
        on_failed_round="retry",
        max_round_retries=1,
    )
    alice = Adversary(channel(coord.address), "alice")
    mallory = Adversary(channel(coord.address), "mallory")

    # Execute
    first_a, first_m = alice.pull(), mallory.pull()
    assert first_a is not None and first_m is not None
    bad = [np.full_like(a, HUGE) for a in first_m.arrays]
    mallory.push(mallory.messages(first_m, arrays=bad, num_examples=1))
    alice.push(alice.messages(first_a, arrays=[a + 1 for a in first_a.arrays]))
    retry_a, retry_m = alice.pull(), mallory.pull()
    assert retry_a is not None and retry_m is not None
    mallory.stub.DeclineTask(pb.DeclineRequest(auth=mallory.auth, round=1, reason="no"))
    alice.push(alice.messages(retry_a, arrays=[a + 1 for a in retry_a.arrays]))
    history = coord.join(timeout=60)

    # Assert: the first attempt failed on its non-finite model, the retry committed
    rounds = [e for e in history if e["event"] == "round"]
    assert [(e["attempt"], e["committed"]) for e in rounds] == [(0, False), (1, True)]
    assert "non-finite" in rounds[0]["reason"]
    # the committed state is one step from round 0's: t = 1, velocity = global - mean = -1
    run = tmp_path / "run"
    with sqlite3.connect(run / "run.sqlite") as db:
        row = db.execute("SELECT state FROM strategy_state WHERE round = 1").fetchone()
    state = json.loads(row[0])
    assert state["steps"] == 1
    moments = load_file(str(run / "models" / state["_arrays"]["file"]))
    assert sorted(moments) == ["velocity/0", "velocity/1", "velocity/2"]
    for v in moments.values():
        assert np.array_equal(v, np.full_like(v, -1.0))
    # and the model is that step: x + LR, each tensor k holding k at round 0
    model = load_file(str(run / "models" / "round-0001.safetensors"))
    for k in range(3):
        w = model[f"weights.{k}"]
        assert np.array_equal(w, np.full_like(w, k + LR))


def test_when_every_node_has_left_the_retry_does_not_wait_for_them(tmp_path: Path) -> None:
    # Prepare: the default one-hour join timeout; both nodes' training fails, so each declines
    # round 1 and leaves the run (exit 1)
    coord = start_coordinator(tmp_path, rounds=2, min_nodes=2, join_timeout_s=3600.0)
    args = {"params": 1000, "tensors": 3, "fail_fit": "true"}
    procs = [start_node(coord.address, f"n{i}", seed=i, task_args=args) for i in range(2)]
    started = time.monotonic()

    # Execute
    with pytest.raises(RunAborted) as info:
        coord.join(timeout=30)
    codes = wait_all(procs)

    # Assert: the run ended at once, saying why; round 1 failed on the declines
    assert time.monotonic() - started < 30
    assert codes == [1, 1]
    assert "every node has left the run" in str(info.value)
    events = [json.loads(x) for x in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    first = next(e for e in events if e["event"] == "round")
    assert not first["committed"] and all("declined" in r for r in first["refused"].values())
    assert events[-1]["event"] == "aborted"
