"""``fedhive report``: curves, summary and TensorBoard files from a run's events.jsonl."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from fedhive.common.cli.report import load_run, main, markdown
from fedhive.common.record import RoundRecord


def record(**fields: Any) -> dict[str, Any]:
    """An events.jsonl line of a round record (as the coordinator writes it)."""
    base = RoundRecord(
        event="round",
        round=0,
        attempt=0,
        selected=["n0", "n1"],
        refused={},
        dropped=[],
        duration_s=2.0,
        bytes_in=0,
        bytes_out=0,
        time=100.0,
        reported=["n0", "n1"],
        examples=10,
        committed=True,
    )
    return dataclasses.replace(base, **fields).to_event()


def write_events(run_dir: Path) -> None:
    events = [{"event": "start", "run_id": "abc", "time": 100.0, "model_bytes": 4000}]
    for r, acc in ((1, 0.5), (2, 0.8), (3, 0.7)):
        events.append(
            record(
                round=r,
                committed=True,
                duration_s=2.0,
                bytes_in=8000,
                bytes_out=8000,
                train={"loss": 1.0 / r, "accuracy": acc - 0.1},
                evaluate={"model_round": r - 1, "accuracy": acc - 0.2, "loss": 1.5 / r},
                server_evaluate={"accuracy": acc, "loss": 1.2 / r, "macro_f1": acc},
                nodes={
                    "n0": {"examples": 5, "train": {"loss": 1.0, "accuracy": 0.4}, "evaluate": {}},
                    "n1": {"examples": 5, "train": {"loss": 0.9, "accuracy": 0.6}, "evaluate": {}},
                },
            )
        )
    events.append(record(round=4, committed=False, reason="x"))
    events.append(record(event="evaluate", model_round=3, evaluate={"accuracy": 0.75, "loss": 0.4}))
    events.append({"event": "finished", "rounds": 3, "time": 112.5})
    run_dir.mkdir(parents=True, exist_ok=True)
    text = "\n".join(json.dumps(e) for e in events) + "\n"
    (run_dir / "events.jsonl").write_text(text, encoding="utf-8")


def test_summary_names_best_round_bytes_and_time(tmp_path: Path) -> None:
    # Prepare
    write_events(tmp_path)

    # Execute
    summary = load_run(tmp_path)
    text = markdown(summary, tmp_path)

    # Assert: committed rounds only; best = server eval of round 2
    assert len(summary.rounds) == 3
    assert "best round (server eval): 2 with accuracy 0.8000" in text
    assert "0.02 MB in (updates), 0.02 MB out (broadcasts)" in text
    assert "wall time: 12.5 s" in text
    assert "federated evaluation of the final model: accuracy 0.7500" in text
    fed = summary.series("accuracy")["federated eval"]
    assert fed[-1] == (3, 0.75) and fed[0] == (0, 0.3)
    assert summary.series("loss")["n1 train"] == [(1, 0.9), (2, 0.9), (3, 0.9)]


def test_report_command_writes_png_markdown_and_tensorboard(tmp_path: Path, capsys) -> None:
    # Prepare
    write_events(tmp_path)

    # Execute
    code = main([str(tmp_path), "--tensorboard"])

    # Assert
    assert code == 0
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "report.md").read_text().startswith("# Run abc")
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "curves:" in capsys.readouterr().out


def test_report_without_events_fails_cleanly(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path)]) == 2
    assert "no events.jsonl" in capsys.readouterr().err


def test_a_stopped_run_says_so_until_it_resumes(tmp_path: Path) -> None:
    # Prepare: a run stopped after round 2 (SIGTERM), and the same run resumed later
    stopped = [
        {"event": "start", "run_id": "abc", "time": 100.0, "model_bytes": 4000},
        {"event": "stopped", "round": 2, "time": 110.0},
    ]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "events.jsonl").write_text("\n".join(json.dumps(e) for e in stopped))
    (tmp_path / "b").mkdir()
    resumed = [*stopped, {"event": "resumed", "round": 2, "time": 120.0}]
    (tmp_path / "b" / "events.jsonl").write_text("\n".join(json.dumps(e) for e in resumed))

    # Execute
    first, second = load_run(tmp_path / "a"), load_run(tmp_path / "b")

    # Assert
    assert first.status == "stopped after round 2 (resumes on restart)"
    assert second.status == "running or interrupted"


def test_several_runs_are_compared_side_by_side_by_strategy(tmp_path: Path, capsys) -> None:
    # Prepare: two runs of the same events, one of them with FedAdam's settings
    write_events(tmp_path / "runs" / "a")
    write_events(tmp_path / "runs" / "b")
    settings = {"strategy": "fedadam", "strategy_args": {"eta": 0.01}}
    (tmp_path / "runs" / "b" / "config.json").write_text(json.dumps(settings))

    # Execute
    code = main([str(tmp_path / "runs" / "a"), str(tmp_path / "runs" / "b")])

    # Assert: one table row per run, labelled; best 0.8 at round 2, final 0.7; a plot beside them
    out = capsys.readouterr().out
    assert code == 0
    assert "| a | 3 | 0.8000 (2) | 0.7000 | 2 | 2.00 |" in out
    assert "| b: fedadam(eta=0.01) | 3 | 0.8000 (2) | 0.7000 | 2 | 2.00 |" in out
    assert (tmp_path / "runs" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "runs" / "compare.md").read_text().startswith("# Runs side by side")


def test_a_line_that_is_not_a_round_record_is_named(tmp_path: Path, capsys) -> None:
    # Prepare: a committed round's line missing most of its record's fields
    line = {"event": "round", "round": 1, "committed": True, "duration_s": 1.0}
    (tmp_path / "events.jsonl").write_text(json.dumps(line) + "\n", encoding="utf-8")

    # Execute
    code = main([str(tmp_path)])

    # Assert: a clear error naming the file and line, not a traceback
    assert code == 2
    err = capsys.readouterr().err
    assert "events.jsonl, line 1: not a round record" in err
