"""Durability: the coordinator is SIGKILLed at random moments and restarted; nothing is lost, and
the run ends with the model of an uninterrupted one."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedhive.common.tasks import digits
from tests.integration.harness import CONSTANT_TASK, start_node, wait_all
from tests.integration.standing import (
    events,
    queue_rows,
    run_settings,
    start_service,
    start_standing_node,
    wait_for,
    write_toml,
)
from tests.integration.test_node_lifecycle import free_port

ROUNDS = 10
# A kill comes at a random instant within this long of a commit seen (polled every 0.05 s): a
# round (30 steps) takes ~0.06 s on a quiet machine, so the first two kills land within 3 rounds
# of a commit, mid-run, even in the fastest run (r1 + 3 and r5 + 3 < 10); a later one may miss
KILL_WITHIN_S = 0.1
DIGITS = "fedhive.common.tasks.digits:make_task"
CONFIG = "federated_evaluation = false\nheartbeat_interval_s = 0.5\nmin_updates = 2\n"


def coordinator_cmd(port: int, run_dir: Path, config: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedhive.common.cli", "server", "--config", str(config),
        "--address", f"127.0.0.1:{port}", "--run-dir", str(run_dir), "--task", DIGITS,
        "--rounds", str(ROUNDS), "--min-nodes", "2", "--train", "steps=30", "--no-progress",
        "--insecure",
    ]  # fmt: skip


def node_cmd(port: int, i: int, data: Path) -> list[str]:
    return [
        sys.executable, "-m", "fedhive.common.cli", "client", "--server", f"127.0.0.1:{port}",
        "--task", DIGITS, "--data", str(data), "--name", f"n{i}", "--seed", str(i),
        "--device", "cpu", "--backoff-max", "0.5", "--max-connect-attempts", "200", "--insecure",
    ]  # fmt: skip


def last_round(run_dir: Path) -> int:
    try:
        with sqlite3.connect(f"file:{run_dir / 'run.sqlite'}?mode=ro", uri=True) as db:
            row = db.execute("SELECT MAX(round) FROM rounds").fetchone()
    except sqlite3.Error:
        return -1
    return -1 if row is None or row[0] is None else int(row[0])


def wait_for_progress(run_dir: Path, seen: int, coord: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and coord.poll() is None:
        now = last_round(run_dir)
        if now > seen:
            return now
        time.sleep(0.05)
    return seen


def models(run_dir: Path) -> list[dict[str, np.ndarray]]:
    return [
        load_file(str(run_dir / "models" / f"round-{r:04d}.safetensors")) for r in range(ROUNDS + 1)
    ]


def run_digits(tmp_path: Path, extra: str, kill_at: random.Random | None) -> tuple[Path, int]:
    """2 digits nodes (Dirichlet 0.5 shares of the bundled digits) that outlive the coordinator;
    with ``kill_at``, the coordinator is SIGKILLed at random instants and restarted 4 times."""
    data = tmp_path / "data"
    _, dirs = digits.prepare_simulation(data, 2, 0.5, 0)
    port, run_dir = free_port(), tmp_path / "run"
    config = tmp_path / "server.toml"
    config.write_text(CONFIG + extra)
    logs = [open(tmp_path / f"node{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    nodes = [
        subprocess.Popen(node_cmd(port, i, d), stdout=f, stderr=f)
        for i, (d, f) in enumerate(zip(dirs, logs, strict=True))
    ]
    kills, seen = 0, -1
    try:
        for attempt in range(5 if kill_at is not None else 1):
            with open(tmp_path / f"coord{attempt}.log", "wb") as out:
                coord = subprocess.Popen(
                    coordinator_cmd(port, run_dir, config), stdout=out, stderr=out
                )
            if kill_at is None or attempt == 4:
                log = tmp_path / f"coord{attempt}.log"
                assert coord.wait(timeout=120) == 0, log.read_text()
                break
            # kill at a random instant once this coordinator has committed a new round
            seen = wait_for_progress(run_dir, seen, coord)
            time.sleep(kill_at.uniform(0.0, KILL_WITHIN_S))
            if coord.poll() is None:
                coord.send_signal(signal.SIGKILL)
                kills += 1
            coord.wait()
        codes = wait_all(nodes, timeout=60)
    finally:
        for n in nodes:
            n.kill() if n.poll() is None else None
        for f in logs:
            f.close()
    assert codes == [0, 0], [(tmp_path / f"node{i}.log").read_text()[-2000:] for i in range(2)]
    return run_dir, kills


FEDADAM = 'strategy = "fedadam"\n[strategy_args]\neta = 0.01\n'


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, np.ndarray]]:
    run_dir, _ = run_digits(tmp_path_factory.mktemp("uninterrupted"), "", None)
    return models(run_dir)


def assert_same_run(
    run_dir: Path, kills: int, reference: list[dict[str, np.ndarray]], resumed: int = 2
) -> None:
    """Killed at least twice mid-run (resumed at least ``resumed`` times), every round committed
    once, every model bit for bit."""
    assert kills >= 2
    with sqlite3.connect(run_dir / "run.sqlite") as db:
        committed = [r[0] for r in db.execute("SELECT round FROM rounds ORDER BY round")]
    assert committed == list(range(ROUNDS + 1))
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    rounds = [e["round"] for e in events if e["event"] == "round" and e["committed"]]
    assert rounds == list(range(1, ROUNDS + 1))
    assert sum(e["event"] == "resumed" for e in events) >= resumed
    for r, (got, want) in enumerate(zip(models(run_dir), reference, strict=True)):
        assert sorted(got) == sorted(want)
        for name in want:
            assert got[name].tobytes() == want[name].tobytes(), f"round {r}: {name} differs"


def test_sigkill_at_random_moments_with_fedadam_continues_its_moments(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Prepare: FedAdam, whose moments must survive each kill (committed next to each round's
    # model); the same run without interruption
    reference, _ = run_digits(tmp_path_factory.mktemp("fedadam-whole"), FEDADAM, None)

    # Execute
    run_dir, kills = run_digits(
        tmp_path_factory.mktemp("fedadam-killed"), FEDADAM, random.Random(11)
    )

    # Assert: bit for bit, every round
    assert_same_run(run_dir, kills, models(reference))


@pytest.mark.parametrize(
    "extra", ["", "broadcast_memory_bytes = 0\n"], ids=["model-in-memory", "model-from-checkpoint"]
)
def test_sigkill_at_random_moments_loses_nothing(
    tmp_path: Path, extra: str, uninterrupted: list[dict[str, np.ndarray]]
) -> None:
    # Prepare: the digits task on 2 nodes (rounds retrained after a kill must give the same
    # update); the global model kept in memory, or served from its checkpoint (then a restart
    # serves the last one); the same run without interruption (the fixture)

    # Execute: start, SIGKILL after a random delay, restart ... then let the last one finish
    run_dir, kills = run_digits(tmp_path, extra, random.Random(7))

    # Assert: killed at least twice mid-run, every round committed exactly once, and every
    # round's model equals that of the uninterrupted run, bit for bit
    assert_same_run(run_dir, kills, uninterrupted)


def test_resume_with_another_config_is_refused(tmp_path: Path) -> None:
    # Prepare: a finished one-round run
    run_dir = tmp_path / "run"
    base = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--address", "127.0.0.1:0",
        "--run-dir", str(run_dir), "--task", CONSTANT_TASK, "--min-nodes", "1", "--no-progress",
        "--task-arg", "params=10", "--insecure",
    ]  # fmt: skip
    first = subprocess.Popen([*base, "--rounds", "1", "--train", "x=1"], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (run_dir / "run.sqlite").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)

    # Execute: same run directory, another seed
    second = subprocess.run(
        [*base, "--rounds", "1", "--train", "x=1", "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Assert
    assert second.returncode == 2
    assert "another configuration" in second.stderr and "seed" in second.stderr


@pytest.mark.parametrize("flag", ["--resume"])
def test_resume_flag_needs_a_run_directory(tmp_path: Path, flag: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fedhive.common.cli", "server", flag, str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "not a fedhive run directory" in proc.stderr


def test_resuming_a_finished_run_says_so_and_exits(tmp_path: Path) -> None:
    # Prepare: a one-round run that finished (its node told so and gone)
    port, run_dir = free_port(), tmp_path / "run"
    cmd = [
        sys.executable, "-m", "fedhive.common.cli", "server", "--address", f"127.0.0.1:{port}",
        "--run-dir", str(run_dir), "--task", CONSTANT_TASK, "--min-nodes", "1", "--rounds", "1",
        "--no-progress", "--insecure", "--task-arg", "params=1000", "--task-arg", "tensors=3",
    ]  # fmt: skip
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    node = start_node(f"127.0.0.1:{port}", "n0", 0, max_connect_attempts=100)
    assert wait_all([first, node], timeout=60) == [0, 0]

    # Execute: resume it (nodes would be waited for up to the 3,600 s join timeout)
    started = time.monotonic()
    again = subprocess.run(
        [sys.executable, "-m", "fedhive.common.cli", "server", "--resume", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Assert: it says the run is over, shows its rounds, exits at once, records nothing more
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    assert "run directory" in again.stdout
    assert time.monotonic() - started < 30
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events].count("finished") == 1
    assert not any(e["event"] == "resumed" for e in events)


def committed(state: Path) -> int:
    """Rounds committed so far over every run of a service's state directory."""
    return sum(last_round(d) + 1 for d in sorted((state / "runs").glob("*")) if d.is_dir())


def test_sigkill_at_random_moments_keeps_a_queue_of_two_runs(
    tmp_path: Path, uninterrupted: list[dict[str, np.ndarray]]
) -> None:
    # Prepare: a coordinator service with two runs queued, each the digits run of the fixture;
    # two standing nodes (the fixture's data and seeds) that outlive every service process
    _, dirs = digits.prepare_simulation(tmp_path / "data", 2, 0.5, 0)
    state, port = tmp_path / "state", free_port()
    settings = run_settings(DIGITS, rounds=ROUNDS, min_nodes=2, min_updates=2)
    settings.update(train={"steps": 30}, heartbeat_timeout_s=30.0, join_timeout_s=3600.0)
    settings.pop("round_timeout_s")
    runs = [write_toml(tmp_path / f"run{i}.toml", settings) for i in range(2)]
    nodes = [
        start_standing_node(tmp_path, port, f"n{i}", {DIGITS: {"data_dir": d}}, seed=i)[0]
        for i, d in enumerate(dirs)
    ]
    kill_at, kills, seen = random.Random(5), 0, 0

    # Execute: SIGKILL the service at random instants after a commit, in either run, and start
    # it again on the same state directory (without submitting anything) until the queue is done
    try:
        for attempt in range(5):
            log = tmp_path / f"service{attempt}.log"
            service = start_service(state, port, log, runs if attempt == 0 else [])
            if attempt == 4:
                wait_for(
                    lambda: [s for _, s, _ in queue_rows(state)] == ["finished"] * 2,
                    240,
                    "the queue to finish",
                    service,
                )
                service.send_signal(signal.SIGTERM)
                assert service.wait(timeout=60) == 0, log.read_text()[-3000:]
                break
            deadline = time.monotonic() + 120
            while committed(state) <= seen and time.monotonic() < deadline:
                assert service.poll() is None, log.read_text()[-3000:]
                time.sleep(0.05)
            seen = committed(state)
            time.sleep(kill_at.uniform(0.0, KILL_WITHIN_S))
            if service.poll() is None:
                service.send_signal(signal.SIGKILL)
                kills += 1
            service.wait()
        alive = [n.poll() is None for n in nodes]
    finally:
        for n in nodes:
            n.send_signal(signal.SIGTERM) if n.poll() is None else None
        codes = wait_all(nodes, timeout=30)

    # Assert: killed at least twice; both runs finished, each in its own directory, every round
    # committed once and bit for bit the model of the uninterrupted run; the nodes stayed
    assert alive == [True, True] and codes == [0, 0]
    rows = queue_rows(state)
    assert [s for _, s, _ in rows] == ["finished", "finished"], rows
    for run_id, _, _ in rows:
        assert_same_run(state / "runs" / run_id, max(kills, 2), uninterrupted, resumed=0)
    assert kills >= 2
    resumed = sum(e["event"] == "resumed" for r, _, _ in rows for e in events(state / "runs" / r))
    assert resumed >= 2
