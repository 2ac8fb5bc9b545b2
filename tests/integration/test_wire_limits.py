"""What one caller can hold over real gRPC: absurd waits, hung-up pulls, idle streams, and the
node registry. Each attack is made by a hand-built client speaking raw protobuf."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.integration.harness import channel, start_coordinator

REFUSED_OR_CUT = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}


def join(stub: pb_grpc.CoordinatorStub, name: str, examples: int = 10) -> pb.NodeAuth:
    request = pb.JoinRequest(name=name, device="cpu", num_examples=examples, protocol_version=1)
    auth: pb.NodeAuth = stub.Join(request, timeout=5).auth
    return auth


def call_code(call: object) -> grpc.StatusCode | None:
    try:
        list(call) if isinstance(call, Iterator) else call  # drain a stream
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return None


def test_pull_waits_that_are_not_finite_or_negative_are_refused_at_once(tmp_path: Path) -> None:
    # Prepare: one node, no round open (min_nodes = 2)
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2)
    stub = pb_grpc.CoordinatorStub(channel(coord.address))
    auth = join(stub, "mallory")

    # Execute: each absurd wait, with a client deadline far below the 60 s a pull may last
    outcomes = {}
    for wait in (float("nan"), float("inf"), float("-inf"), -1.0):
        try:
            list(stub.PullTask(pb.PullTaskRequest(auth=auth, wait_s=wait), timeout=3))
            outcomes[wait] = None
        except grpc.RpcError as exc:
            outcomes[wait] = (exc.code(), exc.details())

    # Assert: refused with INVALID_ARGUMENT naming the field (not DEADLINE_EXCEEDED: no spinning)
    coord.stop()
    for wait, outcome in outcomes.items():
        assert outcome is not None, wait
        assert outcome[0] == grpc.StatusCode.INVALID_ARGUMENT, (wait, outcome)
        assert "wait_s" in outcome[1]


def test_a_pull_whose_caller_hung_up_gives_back_its_slot(tmp_path: Path) -> None:
    # Prepare: 8 call slots; one node, no round open
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2, max_workers=8, rpc_reserve=2)
    stub = pb_grpc.CoordinatorStub(channel(coord.address))
    auth = join(stub, "mallory")

    # Execute: 8 pulls asking to wait 60 s whose caller hangs up after 0.3 s, then a pull that
    # asks for no wait, retried until it gets through or 10 s pass
    hung = [
        call_code(stub.PullTask(pb.PullTaskRequest(auth=auth, wait_s=60), timeout=0.3))
        for _ in range(8)
    ]
    deadline = time.monotonic() + 10
    while True:
        try:
            msgs = list(stub.PullTask(pb.PullTaskRequest(auth=auth, wait_s=0), timeout=3))
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, "hung-up pulls still hold every slot"
            time.sleep(0.1)

    # Assert: the late pull was served (a WAIT), well before the hung-up pulls' 60 s
    coord.stop()
    assert set(hung) <= {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert msgs[0].header.kind == pb.TASK_KIND_WAIT


def test_a_node_holds_at_most_two_pulls_at_a_time(tmp_path: Path) -> None:
    # Prepare: two nodes, no round open
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=3)
    stub = pb_grpc.CoordinatorStub(channel(coord.address))
    mallory, alice = join(stub, "mallory"), join(stub, "alice")

    # Execute: mallory opens 4 pulls that may wait 2 s; then alice pulls
    def pull(auth: pb.NodeAuth, wait_s: float) -> Any:
        return stub.PullTask(pb.PullTaskRequest(auth=auth, wait_s=wait_s), timeout=10)

    calls = [pull(mallory, 2.0) for _ in range(4)]
    outcomes = [call_code(c) for c in calls]
    details = [c.details() for c in calls]
    alice_first = next(iter(pull(alice, 0.0))).header.kind

    # Assert: two waited (and got WAIT), two were refused at once naming the node
    coord.stop()
    assert sorted(map(str, outcomes)) == sorted(
        ["None", "None"] + ["StatusCode.RESOURCE_EXHAUSTED"] * 2
    )
    assert (
        sum(f"{mallory.node_id} already has 2 such calls open" in (d or "") for d in details) == 2
    )
    assert alice_first == pb.TASK_KIND_WAIT


def test_idle_upload_streams_cannot_lock_out_heartbeats_and_joins(tmp_path: Path) -> None:
    # Prepare: 16 call slots, 4 kept for short calls; a header must come within 1 s
    coord = start_coordinator(
        tmp_path, rounds=1, min_nodes=3, max_workers=16, rpc_reserve=4, header_timeout_s=1.0
    )
    ch = channel(coord.address)
    stub = pb_grpc.CoordinatorStub(ch)
    honest = join(stub, "honest")
    release = threading.Event()

    def silent() -> Iterator[pb.UpdateMessage]:
        release.wait(30)
        return
        yield  # a generator that sends nothing

    # Execute: 30 upload streams that never send a header; meanwhile a heartbeat and a join
    started = time.monotonic()
    calls = [stub.PushUpdate.future(silent()) for _ in range(30)]
    time.sleep(0.2)  # let them reach the coordinator (not needed for correctness)
    beat = stub.Heartbeat(pb.HeartbeatRequest(auth=honest), timeout=5)
    newcomer = join(stub, "newcomer")
    codes = [f.exception(timeout=15) for f in calls]
    elapsed = time.monotonic() - started
    release.set()

    # Assert: the honest calls got through; every silent stream was refused at once or cut off
    # after the header timeout (not left open)
    coord.stop()
    ch.close()
    assert beat.heartbeat_interval_s > 0
    assert newcomer.node_id.startswith("newcomer")
    assert all(isinstance(c, grpc.RpcError) and c.code() in REFUSED_OR_CUT for c in codes), codes
    assert grpc.StatusCode.CANCELLED in {c.code() for c in codes}  # admitted, then cut off
    assert elapsed < 10


def test_the_node_registry_is_capped_and_forgets_nodes_that_never_came_back(
    tmp_path: Path,
) -> None:
    # Prepare: room for 4 nodes; a node silent for 1.5 s may be forgotten
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=3,
        max_registered_nodes=4,
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=1.0,
        node_expiry_s=1.5,
    )
    stub = pb_grpc.CoordinatorStub(channel(coord.address))
    first = [join(stub, f"n{i}") for i in range(2)]

    # Execute: fill the registry, try one more, then retry while the first two stay silent
    join(stub, "n2")
    join(stub, "n3")
    with pytest.raises(grpc.RpcError) as full:
        join(stub, "n4")
    deadline = time.monotonic() + 10
    while True:
        try:
            later = join(stub, "n5")
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
            assert time.monotonic() < deadline, "silent nodes are never forgotten"
            time.sleep(0.2)
    with pytest.raises(grpc.RpcError) as forgotten:
        stub.Heartbeat(pb.HeartbeatRequest(auth=first[0]), timeout=5)

    # Assert: refused clearly while full; room made by forgetting silent nodes, whose tokens are
    # then unknown (an honest node would join again)
    coord.stop()
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "maximum of 4 nodes" in full.value.details()
    assert later.node_id.startswith("n5")
    assert forgotten.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_example_counts_beyond_the_policy_are_refused_at_join_and_in_reports(
    tmp_path: Path,
) -> None:
    # Prepare
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2, max_node_examples=1000)
    stub = pb_grpc.CoordinatorStub(channel(coord.address))

    # Execute
    outcomes = []
    for examples in (2**62, 2**64 - 1, 1001):
        with pytest.raises(grpc.RpcError) as info:
            join(stub, "greedy", examples)
        outcomes.append(info.value)
    allowed = join(stub, "modest", 1000)
    report = pb.EvaluationReport(auth=allowed, round=1, num_examples=2**62)
    with pytest.raises(grpc.RpcError) as evaluation:
        stub.ReportEvaluation(report, timeout=5)

    # Assert
    coord.stop()
    for exc in outcomes:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "at most 1000 per node (max_node_examples)" in exc.details()
    assert allowed.node_id.startswith("modest")
    assert evaluation.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "num_examples of 4611686018427387904 exceeds" in evaluation.value.details()
