"""The node runtime as a real process: backoff before the coordinator exists, SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.integration.harness import start_coordinator, start_node, wait_all


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_node_started_before_coordinator_backs_off_then_joins(tmp_path: Path) -> None:
    # Prepare: the node dials a port where nothing listens yet
    port = free_port()
    log = tmp_path / "node.log"
    proc = start_node(f"127.0.0.1:{port}", "early", seed=0, log=log)
    deadline = time.monotonic() + 60  # wait for a failed attempt, not a fixed time (slow start-up)
    while "cannot reach the coordinator" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)

    # Execute: the coordinator comes up on that port later
    coord = start_coordinator(tmp_path, address=f"127.0.0.1:{port}", rounds=2, min_nodes=1)
    history = coord.join(timeout=60)
    codes = wait_all([proc])

    # Assert
    text = log.read_text()
    assert codes == [0], text
    assert "cannot reach the coordinator" in text
    assert [e["committed"] for e in history if e["event"] == "round"] == [True, True]


def test_sigterm_makes_the_node_leave_cleanly(tmp_path: Path) -> None:
    # Prepare: a round that cannot start (min_nodes=2) and one node waiting in it
    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2, join_timeout_s=60)
    log = tmp_path / "node.log"
    proc = start_node(coord.address, "leaver", seed=0, log=log)
    coordinator = coord.running.coordinator
    deadline = time.monotonic() + 30
    while not coordinator.nodes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert coordinator.nodes(), log.read_text()

    # Execute
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=20)

    # Assert: exit 0 and the coordinator saw it leave
    assert code == 0, log.read_text()
    (record,) = coordinator.nodes().values()
    assert record.finished and not record.alive
    coord.stop()


def test_a_pull_started_after_a_cancel_ends_at_once(tmp_path: Path) -> None:
    # Prepare: a coordinator waiting for 2 nodes (it hands out no task), one joined transport;
    # SIGTERM's cancel lands before the node's next pull is registered
    from fedhive.client.transport import GrpcTransport
    from fedhive.common.errors import TransportError
    from fedhive.common.wire.messages import JoinRequest

    coord = start_coordinator(tmp_path, rounds=1, min_nodes=2)
    transport = GrpcTransport(coord.address)
    try:
        joined = transport.join(JoinRequest(name="n0", device="cpu", num_examples=10))
        transport.cancel()

        # Execute: a long poll of 30 s
        started = time.monotonic()
        with pytest.raises(TransportError):
            for _ in transport.pull(joined.auth, wait_s=30.0):
                pass
        took = time.monotonic() - started
    finally:
        transport.close()
        coord.stop()

    # Assert: it did not wait out its poll (the node would ignore SIGTERM for up to 30 s)
    assert took < 10.0, took
