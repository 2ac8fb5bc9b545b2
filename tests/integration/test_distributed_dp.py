"""Distributed DP inside SecAgg+ over real node processes: a node killed mid-round, and the
epsilon recorded is the one the survivors' noise delivered."""

from __future__ import annotations

import json
import math
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fedhive.common.privacy import rdp
from fedhive.common.privacy.distributed import past_rounds
from tests.integration.harness import start_coordinator, start_node, wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_secagg import SIZES, Killer, final_model, seed_of

ROUNDS = 3
CLIP = 150.0  # above every node's delta norm (4 sqrt(1000) at most): no clipping
NODES = 4
ARGS = {"params": 1000, "tensors": 3}
DP = {"delta": 1e-5, "distributed": {"noise_multiplier": 0.02, "clip": CLIP, "bits": 16}}
SECURE = {
    "secure_aggregation": "secagg+",
    "heartbeat_interval_s": 0.3,
    "heartbeat_timeout_s": 2.0,
    "dp": DP,
}


def test_a_node_killed_mid_round_leaves_less_noise_and_more_epsilon(tmp_path: Path) -> None:
    # Prepare: 4 nodes, distributed DP in SecAgg+; n1 (which trains a little longer) is
    # killed in round 2 once the first masked (already noised) upload was folded: it has
    # exchanged keys but its noise never reaches the sum. n1 joins first: the run (3 nodes
    # suffice, as after the kill) could otherwise be over before a slow start joined it
    killer = Killer(2, "update", victim_prefix="n1-")
    coord = start_coordinator(tmp_path, killer, rounds=ROUNDS, min_nodes=NODES - 1, **SECURE)

    def node(i: int) -> subprocess.Popen[bytes]:
        args = {**ARGS, "train_s": 1.0} if i == 1 else ARGS
        return start_node(coord.address, f"n{i}", i, task_args=args, log=tmp_path / f"n{i}.log")

    victim = node(1)
    coord.wait_joined("n1")
    procs = [node(0), victim, *(node(i) for i in range(2, NODES))]
    killer.victim = victim

    # Execute
    history = coord.join(timeout=240)
    codes = wait_all(procs)

    # Assert: every round committed; the killed round's record counts only its survivors
    logs = [(tmp_path / f"n{i}.log").read_text() for i in range(NODES)]
    k = killer.killed_in
    assert k is not None and 2 <= k <= ROUNDS, (killer.selections, logs)
    assert [c for i, c in enumerate(codes) if i != 1] == [0] * (NODES - 1), logs
    rounds = [e for e in history if e["event"] == "round"]
    assert [e["committed"] for e in rounds] == [True] * ROUNDS
    dps = [e["privacy"]["distributed"] for e in rounds]
    for e, dp in zip(rounds, dps, strict=True):
        assert dp["survivors"] == len(e["reported"]) == e["examples"], (k, rounds)
        assert dp["selected"] == len(e["selected"])
        full = dp["noise_multiplier"] * math.sqrt(dp["selected"] / dp["survivors"])
        assert full >= DP["distributed"]["noise_multiplier"]  # calibrated for all selected
    killed = dps[k - 1]
    assert killed["survivors"] == killed["selected"] - 1, (k, rounds)
    intact = next(dp for dp in dps if dp["survivors"] == dp["selected"])
    assert killed["noise_multiplier"] < intact["noise_multiplier"]
    # epsilon is the accountant over the rounds as delivered (the killed one costs more)
    steps = [(dp["noise_multiplier"], dp["sample_rate"], 1) for dp in dps]
    assert dps[-1]["epsilon"] == rdp.epsilon(steps, DP["delta"])
    as_if_intact = [(max(z for z, _, _ in steps), q, 1) for _, q, _ in steps]
    assert dps[-1]["epsilon"] > rdp.epsilon(as_if_intact, DP["delta"])
    # the model moved by the survivors' mean delta (weight 1 each), within the noise
    step = 0.0
    for e in rounds:
        step += float(np.mean([1.0 + seed_of(u) for u in e["reported"]]))
    noise = math.sqrt(
        sum(dp["node_variance"] / dp["survivors"] * (2 * CLIP / 65535) ** 2 for dp in dps)
    )  # std per value of the survivors' summed noise on the mean, over the rounds
    got = np.concatenate(final_model(tmp_path, ROUNDS)).astype(np.float64)
    want = np.concatenate([np.full(n, float(i)) for i, n in enumerate(SIZES)]) + step
    error = got - want
    assert abs(float(np.mean(error))) < 5 * noise / math.sqrt(got.size) + 1e-3
    # the noise is there, at its calibrated spread (3.9 standard errors: p <= 1e-4)
    assert abs(float(np.std(error)) / noise - 1) < 3.9 / math.sqrt(2 * got.size) + 0.01


class AfterRound:
    """Round listener: sets ``done`` once round ``n`` was committed."""

    def __init__(self, n: int) -> None:
        self.n, self.done = n, threading.Event()

    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        pass

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        pass

    def round_closed(self, event: Mapping[str, Any]) -> None:
        if event.get("round", 0) >= self.n and event.get("committed"):
            self.done.set()


def test_a_resumed_run_continues_the_same_accountant(tmp_path: Path) -> None:
    # Prepare: 3 nodes; the coordinator is stopped after round 1 and started again on the
    # same run directory, with 3 fresh node processes (a resumed coordinator does not know the
    # old processes' identity keys: they cannot take part in its secure rounds)
    port = free_port()
    settings = {**SECURE, "address": f"127.0.0.1:{port}", "rounds": 2, "min_nodes": 3}
    first_done = AfterRound(1)
    first = start_coordinator(tmp_path, first_done, **settings)
    procs = [
        start_node(first.address, f"n{i}", seed=i, task_args=ARGS, log=tmp_path / f"n{i}.log")
        for i in range(3)
    ]
    assert first_done.done.wait(120), "round 1 was not committed"

    # Execute
    first.stop()
    for p in procs:
        p.kill()
    wait_all(procs)
    second = start_coordinator(tmp_path, **settings)
    procs = [
        start_node(second.address, f"m{i}", seed=i, task_args=ARGS, log=tmp_path / f"m{i}.log")
        for i in range(3)
    ]
    second.join(timeout=120)
    codes = wait_all(procs)

    # Assert: every round committed once; each epsilon is the accountant over every round
    # whose noised sum was unmasked before it, the rounds before the restart included
    logs = [(tmp_path / f"m{i}.log").read_text() for i in range(3)]
    assert codes == [0, 0, 0], logs
    lines = (tmp_path / "run" / "events.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines]
    assert any(e["event"] == "resumed" for e in events)
    noised = [e for e in events if e["event"] == "round" and "privacy" in e]
    assert [e["round"] for e in noised if e["committed"]] == [1, 2]
    for i, e in enumerate(noised):
        want = rdp.epsilon(past_rounds(noised[: i + 1]), DP["delta"])
        assert e["privacy"]["distributed"]["epsilon"] == want, (i, noised)
