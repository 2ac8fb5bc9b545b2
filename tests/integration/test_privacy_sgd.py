"""DP-SGD at each site over real node processes: epsilon in every round record, and a site whose
own budget is spent declines while the others go on."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from fedhive.common.privacy import rdp
from fedhive.common.tasks.digits import prepare_simulation
from fedhive.proto.v1 import coordinator_pb2 as pb
from tests.integration.adversary import Adversary
from tests.integration.harness import channel, start_coordinator, start_node, wait_all

DIGITS = "fedhive.common.tasks.digits:make_task"
STEPS = 5  # per round


def test_dp_sgd_digits_federation_records_epsilon_and_a_spent_site_declines(
    tmp_path: Path,
) -> None:
    # Prepare: three sites under SecAgg+ (the epsilon travels in the masked update's trailer);
    # one round of 5 steps at q = 16/383 costs epsilon 1.76, two 1.94 (at delta 1e-5, noise
    # multiplier 1): site n2's own budget of 1.85 covers one round only
    _, dirs = prepare_simulation(tmp_path / "data", 3, None, 0)
    coord = start_coordinator(
        tmp_path,
        task=DIGITS,
        task_args={},
        rounds=2,
        min_nodes=3,
        min_updates=2,
        train={"steps": STEPS},
        dp={"delta": 1e-5, "sgd": {"noise_multiplier": 1.0, "max_grad_norm": 1.0}},
        secure_aggregation="secagg+",
        secagg_clip=8.0,
    )
    logs = [tmp_path / f"n{i}.log" for i in range(3)]
    budgets = [[], [], ["--max-epsilon", "1.85"]]
    procs = [
        start_node(coord.address, f"n{i}", i, task=DIGITS, task_args={}, data=d, log=log, extra=b)
        for i, (d, log, b) in enumerate(zip(dirs, logs, budgets, strict=True))
    ]

    # Execute
    history = coord.join(timeout=240)
    codes = wait_all(procs, timeout=60)

    # Assert: both rounds committed; round 1 records all three sites' epsilon, round 2 the two
    # that trained, and n2's decline names its budget
    assert codes == [0, 0, 0], [log.read_text()[-2000:] for log in logs]
    first, second = [e for e in history if e["event"] == "round"]
    assert first["committed"] and second["committed"]
    sgd1, sgd2 = first["privacy"]["sgd"], second["privacy"]["sgd"]
    assert sgd1["delta"] == 1e-5 and len(sgd1["nodes"]) == 3
    assert all(1.6 < e < 1.85 for e in sgd1["nodes"].values())
    assert len(sgd2["nodes"]) == 2 and all(1.85 < e < 2.1 for e in sgd2["nodes"].values())
    assert sgd2["max"] == max(sgd2["nodes"].values())
    [(declined, why)] = second["refused"].items()
    assert declined not in sgd2["nodes"]
    assert "declined: privacy budget" in why and "max_epsilon 1.85" in why
    # the site's ledger, in its data folder, holds the one round it spent
    ledger = json.loads((dirs[2] / "dp-ledger.json").read_text())
    [entries] = ledger["runs"].values()
    assert len(entries) == 1 and entries[0]["steps"] == STEPS
    assert rdp.epsilon([(1.0, entries[0]["sample_rate"], STEPS)], 1e-5) == pytest.approx(
        next(iter(sgd1["nodes"].values())), rel=0.01
    )


def test_dp_sgd_updates_without_or_with_an_absurd_epsilon_are_refused(tmp_path: Path) -> None:
    # Prepare: a DP-SGD run; three hand-driven nodes, one honest claim
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=3,
        min_updates=1,
        dp={"sgd": {"noise_multiplier": 1.0}},
    )
    alice, bob, carol = (Adversary(channel(coord.address), n) for n in ("alice", "bob", "carol"))
    tasks = [alice.pull(), bob.pull(), carol.pull()]
    assert all(t is not None for t in tasks)
    ta, tb, tc = tasks
    assert ta is not None and tb is not None and tc is not None

    # Execute: alice reports no epsilon (she did not train with DP-SGD), carol claims 1e9
    none = alice.push(alice.messages(ta))
    absurd = carol.push(carol.messages(tc, dp_epsilon=1e9))
    honest = bob.push(bob.messages(tb, dp_epsilon=2.5))
    history = coord.join(timeout=60)

    # Assert: both refused naming the problem; the record holds bob's epsilon only
    assert isinstance(none, grpc.RpcError) and none.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reports no dp_epsilon" in none.details()
    assert isinstance(absurd, grpc.RpcError) and absurd.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dp_epsilon must be a finite number" in absurd.details()
    assert isinstance(honest, pb.PushReply)
    [rnd] = [e for e in history if e["event"] == "round"]
    assert rnd["committed"] and rnd["reported"] == [n for n in rnd["selected"] if "bob" in n]
    assert rnd["privacy"]["sgd"]["nodes"] == {rnd["reported"][0]: 2.5}
    assert rnd["privacy"]["sgd"]["max"] == 2.5
