"""Epsilon shown for every level a round record's ``privacy`` holds: the progress line, the
summary table, ``fedhive report`` (markdown and the epsilon panel)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from fedhive.common.cli import report
from fedhive.common.record import RoundRecord
from fedhive.server.progress import RichProgress, summary_table


def record(r: int) -> dict:
    return {
        "event": "round", "round": r, "attempt": 0, "selected": ["a", "b"], "refused": {},
        "dropped": [], "duration_s": 1.0, "bytes_in": 10, "bytes_out": 10, "time": 0.0,
        "reported": ["a", "b"], "examples": 20, "committed": True,
        "train": {"loss": 1.0 / r, "accuracy": 0.5}, "server_evaluate": {"accuracy": 0.4 + r / 10},
        "privacy": {
            "central": {"delta": 1e-5, "epsilon": 0.5 * r, "noise_multiplier": 1.0, "clip": 1.0},
            "sgd": {"delta": 1e-5, "max": 0.25 * r, "nodes": {"a": 0.25 * r}},
            "future_level": {"delta": 1e-5, "epsilon": 0.1 * r},
        },
    }  # fmt: skip


def test_progress_line_and_summary_show_each_level() -> None:
    console = Console(record=True, width=300)
    progress = RichProgress(3, console)
    progress.live = False
    progress.round_closed(RoundRecord.from_event(record(2)))
    console.print(summary_table([RoundRecord.from_event(record(r)) for r in (1, 2)]))
    out = console.export_text()
    assert "eps central=1.000 future_level=0.200 sgd=0.500" in out
    assert "eps central" in out and "eps sgd" in out and "eps future_level" in out


def test_report_shows_epsilon_next_to_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run directory's events
    lines = [{"event": "start", "run_id": "r", "model_bytes": 4, "time": 0.0}]
    lines += [record(r) for r in (1, 2, 3)]
    (tmp_path / "events.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")

    # Execute
    assert report.main([str(tmp_path)]) == 0

    # Assert: the spent budget per level, a column per level, and a plot with its panel
    text = capsys.readouterr().out
    assert "privacy spent (epsilon at delta 1e-05): central 1.5000, future_level 0.3000" in text
    assert "| eps central | eps future_level | eps sgd |" in text
    assert "| 3 | 0.3333 | - | 0.7000 | 1.0000 | 1.5000 | 0.3000 | 0.7500 |" in text
    assert (tmp_path / "report.png").stat().st_size > 0
    summary = report.load_run(tmp_path)
    assert summary.epsilon_series()["sgd"] == [(1, 0.25), (2, 0.5), (3, 0.75)]


def test_compare_shows_the_epsilon_each_run_spent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = []
    for name, rounds in (("private", (1, 2)), ("plain", (1,))):
        run = tmp_path / name
        run.mkdir()
        events = [record(r) for r in rounds]
        if name == "plain":
            events[0].pop("privacy")
        (run / "events.jsonl").write_text("\n".join(json.dumps(x) for x in events) + "\n")
        runs.append(str(run))
    assert report.main([*runs, "--out", str(tmp_path / "c.png")]) == 0
    text = capsys.readouterr().out
    assert "| s/round | epsilon |" in text
    assert "central 1.000, future_level 0.200, sgd 0.500 |" in text
    assert "| 1.00 | - |\n" in text  # the plain run spent nothing
    assert (tmp_path / "c.png").stat().st_size > 0
