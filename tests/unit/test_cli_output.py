"""What the CLIs print: certificate lists, round lines and the summary table in a log file,
log lines on a terminal, nothing stray on stdout."""

from __future__ import annotations

import dataclasses
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedhive.common.cli.certs import main as certs_main
from fedhive.common.cli.logs import setup_logging
from fedhive.common.record import RoundRecord
from fedhive.server.cli import server_main
from fedhive.server.progress import RichProgress, make_console, summary_table

EVENT = RoundRecord(
    event="round",
    round=7,
    attempt=0,
    selected=["site-a", "site-b", "site-c"],
    refused={},
    dropped=[],
    reported=["site-a", "site-b", "site-c"],
    committed=True,
    duration_s=0.21,
    time=0.0,
    examples=1151,
    bytes_in=512_000,
    bytes_out=512_000,
    train={"loss": 1.8656, "accuracy": 0.3354},
    evaluate={"loss": 2.2868, "accuracy": 0.1359},
    server_evaluate={"loss": 1.6126, "accuracy": 0.6462},
)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_certs_list_keeps_its_columns_on_identity_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    pki = str(tmp_path / "pki")
    certs_main(["init-ca", "--dir", pki, "--name", "North Hospitals"])
    certs_main(["node", "--dir", pki, "--id", "site-a"])
    capsys.readouterr()

    # Execute
    assert certs_main(["list", "--dir", pki]) == 0

    # Assert
    header, *rows = capsys.readouterr().out.splitlines()
    assert [row.split()[1] for row in rows] == ["node", "identity"]
    for column in ("SERIAL", "EXPIRES", "STATUS"):
        at = header.index(column)
        assert all(row[at - 1] == " " and row[at] != " " for row in rows), (column, rows)


def test_round_lines_and_the_summary_do_not_wrap_in_a_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare: stdout is not a terminal here (captured), as when it goes to a log file
    console = make_console()
    progress = RichProgress(3, console)

    # Execute
    with progress:
        progress.round_opened(7, "train", EVENT["selected"])
        progress.update_received(7, 3, 3, 512_000)
        progress.update_received(7, 2, 3, 300_000)  # a late call from a concurrent upload
        progress.round_closed(EVENT)
    console.print(summary_table([EVENT]))

    # Assert
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("round   7: 3/3 nodes, 0.21s  test accuracy=0.6462")
    assert lines[0].endswith("train loss=1.8656")
    header = next(line for line in lines if "round" in line and "examples" in line)
    for column in ("fed-eval acc", "test acc", "examples", "MB out"):
        assert column in header
    assert "…" not in "".join(lines)
    assert "updates" not in "".join(lines)  # no progress bar frame in a file


def test_a_late_update_never_moves_the_bar_back_or_into_the_next_round() -> None:
    # Prepare
    progress = RichProgress(3, make_console())
    progress.round_opened(1, "train", ["a", "b", "c"])

    # Execute
    progress.update_received(1, 3, 3, 10)
    progress.update_received(1, 2, 3, 5)  # out of order
    shown = progress.progress.tasks[0].completed
    progress.round_closed(dataclasses.replace(EVENT, round=1))
    progress.round_opened(2, "train", ["a", "b", "c"])
    progress.update_received(1, 3, 3, 10)  # about round 1, after round 2 opened

    # Assert
    assert shown == 3
    assert progress.progress.tasks[0].completed == 0


def test_a_terminal_log_line_is_not_highlighted(
    monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    # Prepare: a stderr that says it is a colour terminal
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "200")
    setup_logging("INFO")

    # Execute
    logging.getLogger("fedhive.server.grpc").info(
        "join from ipv4:127.0.0.1:58430, certificate of site-a [x]"
    )

    # Assert
    assert "join from ipv4:127.0.0.1:58430, certificate of site-a [x]" in terminal.getvalue()


def test_server_with_no_arguments_prints_nothing_on_stdout(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    restore_logging: None,
) -> None:
    monkeypatch.chdir(tmp_path)

    code = server_main([])

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert "--tls-dir" in err
