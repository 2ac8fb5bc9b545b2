"""Hostile and broken updates over real gRPC: each refused with a clear status naming the
problem, and each round then completes with the honest nodes, their average untouched."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from safetensors.numpy import load_file

from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.spool import SpoolBudget
from tests.integration.adversary import Adversary, Task
from tests.integration.harness import (
    CoordinatorThread,
    channel,
    start_coordinator,
    start_node,
    wait_all,
)

Case = Callable[[Adversary, Task], list[pb.UpdateMessage]]


def wrong_shape(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    specs = [pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in t.specs]
    specs[1].shape[:] = [3, 111]
    return a.messages(t, specs=specs)


def wrong_dtype(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    specs = [pb.TensorSpec(name=s.name, dtype=s.dtype, shape=list(s.shape)) for s in t.specs]
    specs[0].dtype = "float16"
    return a.messages(t, specs=specs)


def nan_values(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    arrays = [x.copy() for x in t.arrays]
    arrays[2][7] = np.nan
    return a.messages(t, arrays=arrays)


def truncated(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, trailer=False)[:-1]


def bad_digest(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, digest=b"\x00" * 32)


def unknown_node(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, auth=pb.NodeAuth(node_id="eve-99", token=b"x" * 32))


def wrong_round(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, round_=t.round + 5)


def oversized(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, extra_chunk=b"\x00" * 4096)


def oversized_chunk(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, chunk_size=t.chunk_size * 2)


def zero_examples(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, num_examples=0)


def huge_claim(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, num_examples=2**62)  # would be the whole model within 6e-8


def max_claim(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, num_examples=2**64 - 1)


def overflowing(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    # finite values whose weighted float32 sum overflows: the aggregate would be all inf
    return a.messages(t, arrays=[np.full_like(x, 3e38) for x in t.arrays], num_examples=2)


def huge_eval_claim(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, eval_examples=2**63)  # would take over the evaluation metrics


def absurd_metric(a: Adversary, t: Task) -> list[pb.UpdateMessage]:
    return a.messages(t, metrics={"loss": 1e300})  # weighted sums of it would overflow


CASES: list[tuple[Case, grpc.StatusCode, str]] = [
    (wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    (wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT, "dtype float16"),
    (nan_values, grpc.StatusCode.INVALID_ARGUMENT, "non-finite"),
    (truncated, grpc.StatusCode.INVALID_ARGUMENT, "truncated"),
    (bad_digest, grpc.StatusCode.INVALID_ARGUMENT, "digest mismatch"),
    (unknown_node, grpc.StatusCode.UNAUTHENTICATED, "unknown node 'eve-99'"),
    (wrong_round, grpc.StatusCode.FAILED_PRECONDITION, "round"),
    (oversized, grpc.StatusCode.RESOURCE_EXHAUSTED, "after the last tensor"),
    (oversized_chunk, grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds the limit"),
    (zero_examples, grpc.StatusCode.INVALID_ARGUMENT, "example count"),
    (huge_claim, grpc.StatusCode.INVALID_ARGUMENT, "than the 10 it declared at join"),
    (max_claim, grpc.StatusCode.INVALID_ARGUMENT, "than the 10 it declared at join"),
    (overflowing, grpc.StatusCode.INVALID_ARGUMENT, "would overflow the aggregate"),
    (huge_eval_claim, grpc.StatusCode.INVALID_ARGUMENT, "eval_examples of 9223372036854775808"),
    (absurd_metric, grpc.StatusCode.INVALID_ARGUMENT, "metric values beyond +-1e+30: loss"),
]


def test_each_bad_update_is_refused_and_rounds_complete_with_honest_nodes(tmp_path: Path) -> None:
    # Prepare: 2 honest node processes + the adversary; chunk size 1 KiB so tensors span chunks
    args = {"params": 3000, "tensors": 3}
    rounds = len(CASES)
    coord = start_coordinator(tmp_path, rounds=rounds, min_nodes=3, chunk_size=1024, task_args=args)
    adversary = Adversary(channel(coord.address))
    procs = [start_node(coord.address, f"h{i}", seed=i, task_args=args) for i in range(2)]
    outcomes = []

    # Execute: one hostile case per round, then a NaN update so the adversary is surely dropped
    for case, _, _ in CASES:
        task = adversary.pull()
        assert task is not None
        outcomes.append(adversary.push(case(adversary, task)))
        adversary.push(nan_values(adversary, task))
    history = coord.join(timeout=120)
    codes = wait_all(procs)

    # Assert: each refusal has the right status and a message naming the problem
    for (case, code, text), outcome in zip(CASES, outcomes, strict=True):
        assert isinstance(outcome, grpc.RpcError), case.__name__
        assert outcome.code() == code, (case.__name__, outcome.details())
        assert text in outcome.details(), (case.__name__, outcome.details())
    # every round committed with exactly the honest nodes
    assert codes == [0, 0]
    rounds_ = [e for e in history if e["event"] == "round"]
    assert len(rounds_) == rounds
    assert all(e["committed"] and len(e["reported"]) == 2 for e in rounds_)
    assert all(any(k.startswith("mallory") for k in e["refused"]) for e in rounds_)
    # the record shows the weights used: each honest node's share of the examples
    for e in rounds_:
        weights = sorted(node["weight"] for node in e["nodes"].values())
        np.testing.assert_allclose(weights, [100 / 201, 101 / 201])
    # and the global model is the honest average: deltas 1, 2 with 100, 101 examples each round
    step = (100 * 1.0 + 101 * 2.0) / 201
    final = load_file(str(tmp_path / "run" / "models" / f"round-{rounds:04d}.safetensors"))
    for k in range(3):
        np.testing.assert_allclose(final[f"weights.{k}"], k + rounds * step, rtol=1e-6)


def test_duplicate_and_late_updates_are_refused(tmp_path: Path) -> None:
    # Prepare: two raw nodes; the round accepts one update and closes at its deadline
    coord = start_coordinator(
        tmp_path, rounds=1, min_nodes=2, min_updates=1, round_timeout_s=2.0, heartbeat_timeout_s=30
    )
    alice, bob = (
        Adversary(channel(coord.address), "alice"),
        Adversary(channel(coord.address), "bob"),
    )
    task_a, task_b = alice.pull(), bob.pull()
    assert task_a is not None and task_b is not None

    # Execute
    first = alice.push(alice.messages(task_a))
    second = alice.push(alice.messages(task_a))
    history = coord.join(timeout=30)
    late = bob.push(bob.messages(task_b))

    # Assert
    assert isinstance(first, pb.PushReply) and first.bytes_received == 4000
    assert isinstance(second, grpc.RpcError)
    assert second.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already sent" in second.details()
    assert isinstance(late, grpc.RpcError)
    assert late.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNAVAILABLE)
    rnd = next(e for e in history if e["event"] == "round")
    assert rnd["committed"] and rnd["reported"] == [n for n in rnd["selected"] if "alice" in n]
    coord.stop()


@pytest.mark.parametrize("payload", [b"", b"\xff\xff\xff", b"\x0a\x05hello-not-a-header"])
def test_malformed_bytes_get_invalid_argument(tmp_path: Path, payload: bytes) -> None:
    # Prepare
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=1, join_timeout_s=5)
    ch = channel(coord.address)
    push = ch.stream_unary(
        "/fedhive.proto.v1.Coordinator/PushUpdate",
        request_serializer=lambda b: b,
        response_deserializer=pb.PushReply.FromString,
    )

    # Execute
    with pytest.raises(grpc.RpcError) as info:
        push(iter([payload]))

    # Assert
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    coord.stop()
    ch.close()


@dataclass
class Stall:
    """Mallory holds the coordinator's only staging buffer: its upload sent the header and one
    chunk, then nothing until ``release`` is set; alice is an honest adversary with her task."""

    coord: CoordinatorThread
    alice: Adversary
    task: Task
    release: threading.Event
    pusher: threading.Thread
    mallory_result: list[object]
    held: int

    @property
    def budget(self) -> SpoolBudget:
        return self.coord.running.coordinator.spool_budget


def stall_with_one_chunk(tmp_path: Path, **settings: object) -> Stall:
    # staging memory for exactly one update: 3 x 1000 float32 = 12,000 bytes
    coord = start_coordinator(
        tmp_path,
        rounds=1,
        min_nodes=2,
        min_updates=1,
        task_args={"params": 3000, "tensors": 3},
        chunk_size=1024,
        spool_memory_bytes=12_000,
        **settings,
    )
    mallory = Adversary(channel(coord.address), "mallory")
    alice = Adversary(channel(coord.address), "alice")
    t_mallory, t_alice = mallory.pull(), alice.pull()
    assert t_mallory is not None and t_alice is not None
    release = threading.Event()
    stalled = mallory.messages(t_mallory)

    def stall() -> Iterator[pb.UpdateMessage]:
        yield from stalled[:2]  # header and first chunk
        release.wait(60)

    result: list[object] = []
    pusher = threading.Thread(
        target=lambda: result.append(_push_stream(mallory, stall())), daemon=True
    )
    pusher.start()
    budget = coord.running.coordinator.spool_budget
    deadline = time.monotonic() + 10
    while budget.used < 12_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    return Stall(coord, alice, t_alice, release, pusher, result, budget.used)


def _push_stream(a: Adversary, messages: Iterator[pb.UpdateMessage]) -> object:
    try:
        return a.stub.PushUpdate(messages)
    except grpc.RpcError as exc:
        return exc


def test_a_stalled_upload_holding_the_staging_buffer_delays_others_by_the_wait_only(
    tmp_path: Path,
) -> None:
    # Prepare: mallory holds the only staging buffer; uploads wait 0.5 s for it
    s = stall_with_one_chunk(tmp_path, spool_wait_s=0.5, round_timeout_s=20.0)

    # Execute: alice's whole, valid update while mallory holds the buffer
    started = time.monotonic()
    reply = s.alice.push(s.alice.messages(s.task, num_examples=7))
    waited = time.monotonic() - started
    s.release.set()
    s.pusher.join(30)
    history = s.coord.join(timeout=60)

    # Assert: alice waited for the buffer, then was staged in a file and accepted; mallory's
    # broken stream was refused; the round committed with alice's update alone
    assert s.held == 12_000
    assert isinstance(reply, pb.PushReply), reply
    assert 0.45 <= waited < 15
    assert isinstance(s.mallory_result[0], grpc.RpcError)
    assert "truncated" in s.mallory_result[0].details()
    (record,) = [e for e in history if e["event"] == "round"]
    assert record["committed"]
    assert [k.split("-")[0] for k in record["reported"]] == ["alice"]
    assert record["examples"] == 7
    final = load_file(str(tmp_path / "run" / "models" / "round-0001.safetensors"))
    for k in range(3):
        np.testing.assert_array_equal(final[f"weights.{k}"], s.task.arrays[k])
    assert s.budget.used == 0


def test_an_upload_still_open_when_its_round_closes_is_cut_off_and_frees_its_buffer(
    tmp_path: Path,
) -> None:
    # Prepare: mallory holds the only staging buffer and never hangs up; the deadline is 3 s
    s = stall_with_one_chunk(tmp_path, spool_wait_s=0.2, round_timeout_s=3.0)

    # Execute: alice reports; the round then closes at its deadline with mallory still in flight
    reply = s.alice.push(s.alice.messages(s.task))
    s.pusher.join(30)
    history = s.coord.join(timeout=60)
    s.release.set()

    # Assert: mallory's stream was cancelled by the coordinator (not by mallory), its buffer is
    # back, and the round committed with alice's update
    assert s.held == 12_000
    assert isinstance(reply, pb.PushReply), reply
    assert not s.pusher.is_alive()
    assert isinstance(s.mallory_result[0], grpc.RpcError)
    assert s.mallory_result[0].code() == grpc.StatusCode.CANCELLED, s.mallory_result[0]
    assert s.budget.used == 0
    (record,) = [e for e in history if e["event"] == "round"]
    assert record["committed"]
    assert [k.split("-")[0] for k in record["reported"]] == ["alice"]


def test_a_stalled_upload_is_cut_off_after_its_idle_timeout_and_the_round_closes_early(
    tmp_path: Path,
) -> None:
    # Prepare: mallory sent its header and one chunk, then nothing; the deadline is 30 s, the
    # idle timeout 1 s
    s = stall_with_one_chunk(
        tmp_path, spool_wait_s=0.2, round_timeout_s=30.0, upload_idle_timeout_s=1.0
    )

    # Execute: alice reports; the round should not wait for mallory's silent stream
    reply = s.alice.push(s.alice.messages(s.task))
    history = s.coord.join(timeout=60)
    s.pusher.join(30)
    s.release.set()

    # Assert: mallory was cut off (CANCELLED), refused with the reason, its buffer freed; the
    # round committed with alice well before its deadline
    assert isinstance(reply, pb.PushReply), reply
    assert isinstance(s.mallory_result[0], grpc.RpcError)
    assert s.mallory_result[0].code() == grpc.StatusCode.CANCELLED, s.mallory_result[0]
    assert s.budget.used == 0
    (record,) = [e for e in history if e["event"] == "round"]
    assert record["committed"]
    assert record["duration_s"] < 10
    (reason,) = [r for k, r in record["refused"].items() if k.startswith("mallory")]
    assert "stalled: next message within 1s" in reason
