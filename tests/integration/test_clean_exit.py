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
