"""A deliberate stop (SIGTERM) is not the run's end: nodes stay, a restart resumes with them."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedhive.server import waiting
from fedhive.server.store import RunStore
from tests.integration.harness import CONSTANT_TASK, start_coordinator, wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_resume import last_round

ROUNDS = 4
ARGS = ["--task-arg", "params=1000", "--task-arg", "tensors=2"]


def coordinator_cmd(port: int, run_dir: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedhive.common.cli", "server", "--config", str(config),
        "--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir), "--task", CONSTANT_TASK,
        *ARGS, "--rounds", str(ROUNDS), "--min-nodes", "3", "--no-progress", "--insecure",
    ]  # fmt: skip


def node_cmd(port: int, i: int) -> list[str]:
    return [
        sys.executable, "-m", "fedhive.common.cli", "client", "--server", f"127.0.0.1:{port}",
        "--task", CONSTANT_TASK, *ARGS, "--task-arg", "train_s=0.3", "--name", f"n{i}",
        "--seed", str(i), "--device", "cpu", "--backoff-max", "0.5", "--insecure",
    ]  # fmt: skip


def test_sigterm_on_the_coordinator_keeps_the_nodes_and_a_restart_resumes_with_them(
    tmp_path: Path,
) -> None:
    # Prepare: a coordinator process and 3 node processes; rounds of >= 0.3 s (training time)
    port, run_dir = free_port(), tmp_path / "run"
    config = tmp_path / "server.toml"
    config.write_text("federated_evaluation = false\nheartbeat_interval_s = 0.5\n")
    logs = [tmp_path / f"node{i}.log" for i in range(3)]
    outs = [open(p, "wb") for p in logs]  # noqa: SIM115
    nodes = [subprocess.Popen(node_cmd(port, i), stdout=f, stderr=f) for i, f in enumerate(outs)]
    first_log, second_log = tmp_path / "coord0.log", tmp_path / "coord1.log"
    coordinators: list[subprocess.Popen[bytes]] = []
    try:
        with open(first_log, "wb") as out:
            coord = subprocess.Popen(coordinator_cmd(port, run_dir, config), stdout=out, stderr=out)
        coordinators.append(coord)
        deadline = time.monotonic() + 60
        while last_round(run_dir) < 1 and coord.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)

        # Execute: SIGTERM mid-run, then the same command on the same run dir and port
        coord.send_signal(signal.SIGTERM)
        stopped_rc = coord.wait(timeout=60)
        stopped_at = last_round(run_dir)
        alive_after_stop = [n.poll() is None for n in nodes]
        with open(second_log, "wb") as out:
            again = subprocess.Popen(coordinator_cmd(port, run_dir, config), stdout=out, stderr=out)
        coordinators.append(again)
        resumed_rc = again.wait(timeout=60)
        codes = wait_all(nodes, timeout=60)
    finally:
        for p in [*coordinators, *nodes]:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in outs:
            f.close()

    # Assert: a clean stop (exit 0) mid-run; the same node processes finished the run
    texts = [p.read_text() for p in logs]
    assert stopped_rc == 0, first_log.read_text()
    assert 1 <= stopped_at < ROUNDS
    assert alive_after_stop == [True, True, True], texts
    assert resumed_rc == 0, second_log.read_text()
    assert codes == [0, 0, 0], texts
    assert all(t.count("run finished") == 1 for t in texts), texts
    assert all(f"run finished after round {ROUNDS}" in t for t in texts), texts
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        committed = [r[0] for r in db.execute("SELECT round FROM rounds ORDER BY round")]
    assert committed == list(range(ROUNDS + 1))
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert "stopped" in kinds and "aborted" not in kinds
    assert kinds.index("stopped") < kinds.index("resumed") < kinds.index("finished")
    assert "resuming run" in second_log.read_text()


def test_a_waiting_coordinator_names_the_nodes_it_expects_and_how_long_it_waited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: a run whose registry knows two nodes (none of them running), stopped after round 0
    first = start_coordinator(tmp_path, rounds=2, min_nodes=2)
    deadline = time.monotonic() + 30
    while last_round(tmp_path / "run") < 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.stop()
    store = RunStore(tmp_path / "run")
    for seq, name in enumerate(["site-b", "site-a"], start=1):
        store.add_node(name, name, b"t" * 32, seq)
    store.close()
    monkeypatch.setattr(waiting, "WAIT_LOG_INTERVAL_S", 0.2)

    # Execute: the restarted coordinator waits for them
    with caplog.at_level("INFO", logger="fedhive.server"):
        coord = start_coordinator(tmp_path, rounds=2, min_nodes=2)
        deadline = time.monotonic() + 30
        while "waited 1s" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        coord.stop()

    # Assert (the first coordinator's own waiting lines may be captured too: logging may already
    # be at INFO from an earlier test; only the restarted one knows both nodes)
    lines = [r.getMessage() for r in caplog.records if "waiting for 2 node(s)" in r.getMessage()]
    assert lines, caplog.text
    assert any(
        "to start round 1: 0 connected; not connected: site-a, site-b" in line for line in lines
    ), lines
    assert any("waited 1s of the 60s join timeout" in line for line in lines), lines
