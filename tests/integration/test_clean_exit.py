"""A process that loaded a transformer and ran a coordinator in-process exits cleanly (issue 12:
this pair of tests, in this order in one pytest process, passed and then died with SIGABRT at
interpreter shutdown)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAIR = [
    "tests/unit/test_tasks.py::test_lora_sends_only_adapters_and_head",
    "tests/integration/test_learning.py::test_cnn_on_images_learns_over_two_nodes",
]
EXIT_TIMEOUT_S = 300


def test_transformer_then_in_process_coordinator_exits_with_status_0(tmp_path: Path) -> None:
    # Prepare: its own pytest temporary folder (the outer run's is left alone)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    cmd += ["--basetemp", str(tmp_path / "inner"), *PAIR]

    # Execute
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=EXIT_TIMEOUT_S)

    # Assert: both pass, and the process ends with status 0 (not 134, "terminate called ...")
    out = proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout, out[-4000:]
    assert proc.returncode == 0, out[-4000:]
    assert "terminate called" not in out


PROGRAM = """
import sys, time
from pathlib import Path
from tests.integration.harness import start_coordinator, start_node
tmp = Path(sys.argv[1])
coord = start_coordinator(tmp, rounds=3, min_nodes=2)  # one node joins and waits for another
start_node(coord.address, "n0", 0, log=tmp / "node.log")
deadline = time.monotonic() + 60
while "joined run" not in ((tmp / "node.log").read_text() if (tmp / "node.log").exists() else ""):
    assert time.monotonic() < deadline, "the node did not join"
    time.sleep(0.05)
print("leaving with the coordinator serving", flush=True)
"""
LEAVE_S = 30


def test_a_program_that_leaves_its_coordinator_serving_exits_at_once(tmp_path: Path) -> None:
    # Prepare: a program runs a coordinator in-process, a node joins it; the program returns
    # without stopping it (its node's calls still open)

    # Execute
    proc = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60 + LEAVE_S,
    )

    # Assert: the server is stopped at exit; the process ends at once with status 0 (it used to
    # hang for good: the RPC thread pool shut down under gRPC, an open call never ended)
    assert "leaving" in proc.stdout, proc.stderr[-3000:]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot schedule new futures" not in proc.stderr
