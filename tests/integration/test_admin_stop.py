"""An administrator's stop, in an in-process coordinator service over mutual TLS with real gRPC:
the run's record, its log and the queue say "stopped by administrator NAME" (not the
coordinator's "start again to resume"), a run stopped while it winds down stays finished, and a
stop requested before the service was killed is applied when it starts again.
Hand-built nodes (tests/integration/adversary.py) keep it to seconds."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedhive.server.service.queue import RunQueue
from tests.integration.standing import (
    CONSTANT,
    Running,
    events,
    in_process_service,
    run_settings,
    wait_for,
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    with in_process_service(tmp_path) as service:
        yield service


def started(running: Running, rounds: int, min_nodes: int) -> str:
    settings = run_settings(CONSTANT, rounds=rounds, min_nodes=min_nodes)
    run_id = running.service.submit(settings, "admin:alice").run_id
    wait_for(lambda: running.service.current() is not None, 30, "the run to start")
    return run_id


def test_an_administrators_stop_is_recorded_as_such(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a run waiting for its nodes
    caplog.set_level(logging.INFO)
    run_id = started(running, rounds=5, min_nodes=2)

    # Execute: alice stops it through the control plane
    reply = running.stop_run(run_id, "enough").result()
    entry = running.service.queue.get(run_id)

    # Assert: the reply, the queue, the run's record and the log name the administrator
    assert (reply.state, reply.reason) == ("stopped", "stopped by administrator alice: enough")
    assert (entry.state, entry.reason) == ("stopped", "stopped by administrator alice: enough")
    (stopped,) = [e for e in events(running.state / "runs" / run_id) if e["event"] == "stopped"]
    assert stopped["reason"] == "stopped by administrator alice: enough"
    assert f"run {run_id} stopped by administrator alice: enough" in caplog.text
    assert "again" not in caplog.text and "resume" not in caplog.text


def test_a_run_stopped_while_it_winds_down_stays_finished(running: Running) -> None:
    # Prepare: one round with two hand-built nodes; both push, then site-a learns the run is
    # over while site-b has not asked yet (the coordinator waits for it: its wind-down)
    run_id = started(running, rounds=1, min_nodes=2)
    a, b = running.node("site-a"), running.node("site-b")
    for node in (a, b):
        task = node.pull()
        assert task is not None
        node.push(node.messages(task))
    assert a.pull() is None  # FINISH: the run is winding down

    # Execute: alice stops it now, then site-b asks for its next task
    reply = running.stop_run(run_id, "too late")
    queue = running.service.queue
    wait_for(
        lambda: queue.get(run_id).reason or queue.get(run_id).state != "running",
        10,
        "the stop to be received",
    )
    assert b.pull() is None
    info = reply.result()

    # Assert: the run finished, and says so everywhere
    entry = running.service.queue.get(run_id)
    assert (info.state, entry.state, entry.reason) == ("finished", "finished", "")
    kinds = [e["event"] for e in events(running.state / "runs" / run_id)]
    assert kinds[-1] == "finished" and "stopped" not in kinds


def test_a_stop_requested_before_a_restart_is_applied_when_the_service_starts(
    tmp_path: Path,
) -> None:
    # Prepare: a service's queue as a SIGKILL left it: its run running, alice's stop requested
    queue = RunQueue(tmp_path / "state" / "service.sqlite")
    run_id = queue.submit(run_settings(CONSTANT, rounds=5, min_nodes=2), "admin:alice").run_id
    queue.next()
    queue.request_stop(run_id, "stopped by administrator alice: enough")
    queue.close()

    # Execute: the service starts again on that state
    with in_process_service(tmp_path) as running:
        ended = running.service.queue.wait_ended(run_id, 30)

    # Assert: the run did not resume waiting for nodes: it ended as alice asked
    assert (ended.state, ended.reason) == ("stopped", "stopped by administrator alice: enough")
    (stopped,) = [e for e in events(running.state / "runs" / run_id) if e["event"] == "stopped"]
    assert stopped["reason"] == "stopped by administrator alice: enough"
