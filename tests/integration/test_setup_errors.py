"""Setups that cannot work are refused at start, before a run exists or a node joins (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_node_lifecycle import free_port

DIGITS = "fedhive.common.tasks.digits:make_task"


def fedhive(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fedhive.common.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("flag", "named"),
    [
        (["--train", "epocs=2"], "epocs: unknown training setting"),
        (["--task-arg", "widht=8"], "digits task: unknown task_args 'widht'"),
        (
            ["--strategy", "fedadam", "--strategy-arg", "etaa=0.1"],
            "strategy fedadam: etaa: unknown argument",
        ),
        (["--strategy", "fedmedain"], "unknown strategy 'fedmedain'"),
    ],
    ids=["misspelled-train-key", "misspelled-task-arg", "misspelled-strategy-arg", "no-strategy"],
)
def test_a_coordinator_refuses_settings_its_task_refuses_before_the_run_exists(
    tmp_path: Path, flag: list[str], named: str
) -> None:
    # Prepare
    run_dir = tmp_path / "run"

    # Execute
    proc = fedhive(
        "server", "--address", "127.0.0.1:0", "--run-dir", str(run_dir), "--task", DIGITS,
        "--rounds", "1", "--min-nodes", "1", "--no-progress", "--insecure", *flag,
    )  # fmt: skip

    # Assert: refused with the task's own message; nothing stored, so a fixed command just works
    assert proc.returncode == 2, proc.stderr
    assert named in proc.stderr
    assert not (run_dir / "run.sqlite").exists() and not (run_dir / "config.json").exists()


def test_a_rule_that_must_see_each_update_is_refused_under_secure_aggregation(
    tmp_path: Path,
) -> None:
    # Prepare
    run_dir = tmp_path / "run"
    config = tmp_path / "server.toml"
    config.write_text('secure_aggregation = "secagg+"\nstrategy = "fedmedian"\n')

    # Execute
    proc = fedhive(
        "server", "--config", str(config), "--address", "127.0.0.1:0", "--run-dir", str(run_dir),
        "--task", DIGITS, "--rounds", "1", "--min-nodes", "3", "--no-progress", "--insecure",
    )  # fmt: skip

    # Assert: both settings named, nothing stored
    assert proc.returncode == 2, proc.stderr
    assert (
        "strategy = 'fedmedian'" in proc.stderr and "secure_aggregation = 'secagg+'" in proc.stderr
    )
    assert not (run_dir / "run.sqlite").exists()


def test_a_node_without_data_stops_before_joining(tmp_path: Path) -> None:
    # Prepare: nothing listens on the port, so a node that tried to join would say so
    port = free_port()

    # Execute
    proc = fedhive(
        "client", "--server", f"127.0.0.1:{port}", "--task", DIGITS, "--device", "cpu",
        "--insecure", "--max-connect-attempts", "2", "--backoff-max", "0.5",
    )  # fmt: skip

    # Assert
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, output
    assert "this node has no training data" in output and "--data" in output
    assert "cannot reach the coordinator" not in output
