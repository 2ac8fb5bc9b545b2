"""A standing federation over real processes: a coordinator service with a queue of runs, nodes
that stay connected from run to run and run only the tasks their own configuration approves."""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from fedhive.common.config import ServerConfig
from fedhive.common.privacy.rdp import rdp_epsilon, step_rdp
from fedhive.common.tasks import digits
from fedhive.proto.v1 import control_pb2 as cpb
from fedhive.proto.v1 import coordinator_pb2 as pb
from fedhive.server.coordinator import BudgetSpent
from fedhive.server.service.service import one_shot
from tests.integration.harness import start_node, wait_all
from tests.integration.standing import (
    CONSTANT,
    CONSTANT_ARGS,
    DIGITS,
    events,
    queue_rows,
    run_settings,
    start_service,
    start_standing_node,
    wait_for,
    write_toml,
)
from tests.integration.test_node_lifecycle import free_port


def test_two_runs_of_different_tasks_in_a_row_with_a_node_declining_one(tmp_path: Path) -> None:
    # Prepare: a service with two queued runs (the constant task on 3 nodes, then digits on 2);
    # three standing nodes: n0 and n1 approve both tasks, n2 only the constant one
    _, dirs = digits.prepare_simulation(tmp_path / "data", 2, None, 0)
    state, port = tmp_path / "state", free_port()
    first = write_toml(tmp_path / "a.toml", run_settings(CONSTANT, rounds=2, min_nodes=3))
    second = write_toml(
        tmp_path / "b.toml",
        run_settings(DIGITS, rounds=1, min_nodes=2, train={"steps": 3}),
    )
    service = start_service(state, port, tmp_path / "service.log", [first, second])
    both = {CONSTANT: {"task_args": CONSTANT_ARGS}}
    nodes = [
        start_standing_node(tmp_path, port, "n0", {**both, DIGITS: {"data_dir": dirs[0]}}),
        start_standing_node(tmp_path, port, "n1", {**both, DIGITS: {"data_dir": dirs[1]}}),
        start_standing_node(tmp_path, port, "n2", both, seed=2),
    ]
    procs = [service, *(p for p, _ in nodes)]

    try:
        # Execute: both runs, one after the other
        wait_for(
            lambda: [s for _, s, _ in queue_rows(state)] == ["finished", "finished"],
            180,
            "both runs to finish",
            *procs,
        )
        alive = [p.poll() is None for p, _ in nodes]
        for proc, _ in nodes:
            proc.send_signal(signal.SIGTERM)
        codes = wait_all([p for p, _ in nodes], timeout=30)
    finally:
        service.send_signal(signal.SIGTERM)
        service.wait(timeout=30)
        for proc in procs:
            proc.kill() if proc.poll() is None else None

    # Assert: each run in its own directory with its rounds; n2 declined the digits run, the
    # run's record says why; every node outlived both runs and left cleanly on SIGTERM
    logs = {name: log.read_text() for name, (_, log) in zip(("n0", "n1", "n2"), nodes, strict=True)}
    assert alive == [True, True, True], logs
    assert codes == [0, 0, 0], logs
    (a, _, _), (b, _, _) = queue_rows(state)
    run_a, run_b = events(state / "runs" / a), events(state / "runs" / b)
    assert [e["round"] for e in run_a if e["event"] == "round" and e["committed"]] == [1, 2]
    assert [e["round"] for e in run_b if e["event"] == "round" and e["committed"]] == [1]
    (declined,) = [e for e in run_b if e["event"] == "declined"]
    assert declined["node"] == "n2" and declined["task"] == DIGITS
    assert "not approved by this site" in declined["reason"]
    assert not any(e["event"] == "declined" for e in run_a)
    rounds_b = [e for e in run_b if e["event"] == "round"]
    assert all("n2" not in e["selected"] for e in rounds_b)
    assert (state / "runs" / a / "models" / "round-0002.safetensors").exists()


def test_the_one_shot_server_is_a_service_of_one_run_that_takes_no_submissions(
    tmp_path: Path,
) -> None:
    # Prepare: `fedhive server`'s service (one run queued, in memory), plain text
    config = ServerConfig(
        address="127.0.0.1:0", run_dir=tmp_path / "run", task=CONSTANT, insecure=True
    )
    service = one_shot(config)
    port = service.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(method: str, request: object, reply: type) -> object:
        fn = channel.unary_unary(
            f"/fedhive.proto.v1.Control/{method}",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=reply.FromString,  # type: ignore[attr-defined]
        )
        return fn(request, timeout=10)

    try:
        # Execute
        runs = call("ListRuns", cpb.ListRunsRequest(), cpb.RunList)
        with pytest.raises(grpc.RpcError) as caught:
            call(
                "SubmitRun", cpb.SubmitRunRequest(settings_toml=f'task = "{CONSTANT}"'), cpb.RunInfo
            )
    finally:
        channel.close()
        service.stop(grace=0.5)

    # Assert: its one run is listed; another is refused, saying where to submit it
    assert [r.state for r in runs.runs] == ["running"]  # type: ignore[attr-defined]
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "fedhive service" in (caught.value.details() or "")
    assert any(a == "submit" and o.startswith("refused") for _, a, _, o, _ in audit_rows(service))


def test_a_one_shot_server_asks_its_nodes_to_retry_until_its_run_is_served(
    tmp_path: Path,
) -> None:
    # Prepare: `fedhive server`'s service listening, its run not served yet (as while a
    # restarted coordinator loads the run it resumes)
    config = ServerConfig(
        address="127.0.0.1:0", run_dir=tmp_path / "run", task=CONSTANT, insecure=True
    )
    service = one_shot(config)
    port = service.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    heartbeat = channel.unary_unary(
        "/fedhive.proto.v1.Coordinator/Heartbeat",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=lambda b: b,
    )

    # Execute: a node of the run before the restart beats with its token
    try:
        with pytest.raises(grpc.RpcError) as caught:
            heartbeat(pb.HeartbeatRequest(auth=pb.NodeAuth(node_id="n0", token=b"t")), timeout=10)
    finally:
        channel.close()
        service.stop(grace=0.5)

    # Assert: retry shortly (its session may well live on in the resumed run), not "session
    # over" (which made the node join again instead of coming back with its token)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "starting a run" in (caught.value.details() or "")


def audit_rows(service: object) -> list[tuple[str, str, str, str, str]]:
    log = service.queue.audit_log()  # type: ignore[attr-defined]
    return [(r.caller, r.action, r.target, r.outcome, r.detail) for r in log]


def test_a_run_its_privacy_budget_ends_is_finished_in_the_queue_not_aborted(
    tmp_path: Path,
) -> None:
    # Prepare: `fedhive server`'s service with a central DP run whose budget holds one round of
    # three; two constant-task nodes
    z, delta = 2.0, 1e-5
    one, two = (rdp_epsilon(k * step_rdp(z, 1.0), delta) for k in (1, 2))
    config = ServerConfig(
        address="127.0.0.1:0", run_dir=tmp_path / "run", task=CONSTANT, insecure=True,
        task_args=CONSTANT_ARGS, rounds=3, min_nodes=2, progress=False,
        dp={"delta": delta, "max_epsilon": (one + two) / 2,
            "central": {"noise_multiplier": z, "clip": 1.0}},
    )  # fmt: skip
    service = one_shot(config)
    port = service.start()
    procs = [
        start_node(
            f"127.0.0.1:{port}", f"n{i}", i, task_args=CONSTANT_ARGS, log=tmp_path / f"n{i}.log"
        )
        for i in range(2)
    ]
    entry = service.queue.next()
    assert entry is not None

    # Execute
    try:
        with pytest.raises(BudgetSpent) as stop:
            service.run_entry(entry)
        codes = wait_all(procs, timeout=60)
    finally:
        service.stop(grace=0.5)

    # Assert: the run ended where its budget says, which is how it was meant to end
    (ended,) = service.queue.runs()
    assert codes == [0, 0], [(tmp_path / f"n{i}.log").read_text()[-2000:] for i in range(2)]
    assert "max_epsilon" in str(stop.value)
    assert ended.state == "finished", (ended.state, ended.reason)
    assert "max_epsilon" in ended.reason
