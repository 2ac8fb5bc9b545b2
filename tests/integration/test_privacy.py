"""Central DP over real processes: a digits federation whose round records carry epsilon, that
stops before the round that would exceed ``[dp] max_epsilon``, and whose budget survives a
SIGKILL of the coordinator (the resumed run continues the same accountant)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from fedhive.common.cli import report
from fedhive.common.privacy.rdp import rdp_epsilon, step_rdp
from fedhive.common.tasks import digits
from tests.integration.harness import wait_all
from tests.integration.test_node_lifecycle import free_port
from tests.integration.test_resume import CONFIG, coordinator_cmd, node_cmd, wait_for_progress

Z, DELTA = 2.0, 1e-5
EPSILONS = [rdp_epsilon(k * step_rdp(Z, 1.0), DELTA) for k in range(1, 5)]  # 2 of 2 nodes: q = 1
BUDGET = (EPSILONS[2] + EPSILONS[3]) / 2  # three rounds fit, the fourth would exceed it
DP = f"[dp]\ndelta = {DELTA}\nmax_epsilon = {BUDGET}\n"
CENTRAL = f"[dp.central]\nnoise_multiplier = {Z}\nclip = 1.0\n"


def coordinator(port: int, run_dir: Path, config: Path) -> list[str]:
    """test_resume's coordinator, with fewer steps per round (the budget is what is tested)."""
    cmd = coordinator_cmd(port, run_dir, config)
    cmd[cmd.index("steps=30")] = "steps=5"
    return cmd


def events(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]


def test_central_dp_budget_stops_the_run_and_survives_a_sigkill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 2 digits nodes that outlive the coordinator; a budget of three rounds (of 10)
    _, dirs = digits.prepare_simulation(tmp_path / "data", 2, 0.5, 0)
    port, run_dir = free_port(), tmp_path / "run"
    config = tmp_path / "server.toml"
    config.write_text(CONFIG + DP + CENTRAL)
    logs = [open(tmp_path / f"node{i}.log", "wb") for i in range(2)]  # noqa: SIM115
    nodes = [
        subprocess.Popen(node_cmd(port, i, d), stdout=f, stderr=f)
        for i, (d, f) in enumerate(zip(dirs, logs, strict=True))
    ]
    try:
        # Execute: SIGKILL once round 1 is committed, restart, let it run to the budget's
        # stop; then start it once more
        with open(tmp_path / "coord0.log", "wb") as out:
            first = subprocess.Popen(coordinator(port, run_dir, config), stdout=out, stderr=out)
        assert wait_for_progress(run_dir, 0, first) >= 1, (tmp_path / "coord0.log").read_text()
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = subprocess.run(
            coordinator(port, run_dir, config), capture_output=True, text=True, timeout=120
        )
        codes = wait_all(nodes, timeout=60)
        third = subprocess.run(
            coordinator(port, run_dir, config), capture_output=True, text=True, timeout=60
        )
    finally:
        for n in nodes:
            n.kill() if n.poll() is None else None
        for f in logs:
            f.close()

    # Assert: the stop is no failure (nodes told to finish, exit 0), said in the output
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert codes == [0, 0], [(tmp_path / f"node{i}.log").read_text()[-2000:] for i in range(2)]
    assert "privacy budget: round 4 would bring the central epsilon" in second.stdout
    assert "eps central" in second.stdout  # the summary's column
    # ... each committed round's record carries the continuous accountant's epsilon (the
    # restart replayed round 1 before going on), and nothing ran past the budget
    history = events(run_dir)
    rounds = [e for e in history if e["event"] == "round" and e["committed"]]
    assert [e["round"] for e in rounds] == [1, 2, 3]
    got = [e["privacy"]["central"]["epsilon"] for e in rounds]
    assert got == pytest.approx(EPSILONS[:3], rel=1e-9)
    assert all(e["privacy"]["central"]["delta"] == DELTA for e in rounds)
    assert max(got) <= BUDGET
    assert any(e["event"] == "resumed" for e in history)
    end = [e for e in history if e["event"] in ("finished", "aborted")]
    assert len(end) == 1 and end[0]["event"] == "finished" and "max_epsilon" in end[0]["reason"]
    # ... and a restart after the stop has nothing to do
    assert third.returncode == 0 and "already finished" in third.stderr + third.stdout
    assert [e["round"] for e in events(run_dir) if e["event"] == "round"] == [
        e["round"] for e in history if e["event"] == "round"
    ]

    # Execute / Assert: the report shows the budget spent next to the accuracy
    assert report.main([str(run_dir)]) == 0
    text = capsys.readouterr().out
    assert "privacy spent (epsilon at delta 1e-05): central" in text
    assert "| eps central |" in text
