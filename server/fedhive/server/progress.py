"""Live progress (rich): round, updates received / expected, bytes per second; summary table.

On a terminal the round lines and the table fit its width and a live bar shows the round under
way; written to a file or a pipe, lines are never wrapped and there is no bar (nothing to redraw).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fedhive.common.privacy.epsilon import epsilon_text, epsilons
from fedhive.common.record import EVALUATE, RoundRecord

# width of the page when the output is not a terminal: long enough that no line wraps (rich
# would otherwise wrap at 80 columns and squeeze the table's headers)
FILE_WIDTH = 1000


def make_console(stderr: bool = False) -> Console:
    """A console that never highlights; on a file or pipe, one that never wraps."""
    console = Console(stderr=stderr, highlight=False)
    if console.is_terminal:
        return console
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=FILE_WIDTH)


def _metric_text(record: RoundRecord) -> str:
    parts = []
    for metrics, label in (
        (record.server_evaluate or {}, "test"),
        (record.evaluate or {}, "fed-eval"),
        (record.train or {}, "train"),
    ):
        for key in ("accuracy", "loss"):
            if key in metrics:
                parts.append(f"{label} {key}={metrics[key]:.4f}")
    privacy = epsilon_text(record)  # the budget spent so far, per DP level
    if privacy:
        parts.append(privacy)
    return "  ".join(parts)


class RichProgress:
    """A :class:`~fedhive.server.coordinator.RoundListener` that draws to the terminal."""

    def __init__(self, rounds: int, console: Console | None = None) -> None:
        self.console = console or make_console(stderr=True)
        self.rounds = rounds
        self.live = self.console.is_terminal  # draw a bar (a file gets the round lines only)
        self._lock = threading.Lock()  # updates arrive on gRPC threads, rounds on another
        self._round: int | None = None
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("updates  {task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self._task: Any = None
        self._opened = 0.0

    def __enter__(self) -> RichProgress:
        if self.live:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.progress.stop()

    def round_opened(self, round_: int, kind: str, selected: Sequence[str]) -> None:
        with self._lock:
            if self._task is not None:
                self.progress.remove_task(self._task)
            self._opened = time.monotonic()
            self._round = round_
            self._task = self.progress.add_task(
                f"round {round_}/{self.rounds} {kind}", total=len(selected), rate=""
            )

    def update_received(self, round_: int, received: int, expected: int, bytes_in: int) -> None:
        with self._lock:
            if self._task is None or round_ != self._round:
                return  # a late call about a round already closed
            elapsed = max(time.monotonic() - self._opened, 1e-9)
            # calls from concurrent uploads may arrive out of order: the count never goes back
            shown = next(t.completed for t in self.progress.tasks if t.id == self._task)
            done = max(received, int(shown))
            self.progress.update(
                self._task, completed=done, rate=f"{bytes_in / elapsed / 1e6:8.1f} MB/s in"
            )

    def round_closed(self, event: RoundRecord) -> None:
        with self._lock:
            if self._task is not None:
                self.progress.remove_task(self._task)
                self._task = None
            self._round = None
        n_rep, n_sel = len(event.reported), len(event.selected)
        reason = escape(str(event.reason))
        status = "" if event.committed else f"  [red]not committed: {reason}"
        head = "final evaluation" if event.event == EVALUATE else f"round {event.round:>3}"
        self.console.print(
            f"{head}: {n_rep}/{n_sel} nodes, {event.duration_s:.2f}s  "
            f"{_metric_text(event)}{status}",
            highlight=False,
        )


def summary_table(history: Sequence[RoundRecord]) -> Table:
    table = Table(title="fedhive run summary")
    levels = sorted({level for ev in history for level in epsilons(ev)})
    for col in (
        "round",
        "nodes",
        "examples",
        "train loss",
        "fed-eval acc",
        "test acc",
        "seconds",
        "MB in",
        "MB out",
    ):
        table.add_column(col, justify="right")
    for level in levels:  # each DP level's epsilon (at the run's delta) after the round
        table.add_column(f"eps {level}", justify="right")
    for rec in history:
        train = rec.train or {}
        fed = rec.evaluate or {}
        test = rec.server_evaluate or {}
        eps = epsilons(rec)

        def fmt(d: Mapping[str, Any], k: str) -> str:
            return f"{d[k]:.4f}" if k in d else "-"

        label = "final eval" if rec.event == EVALUATE else str(rec.round)
        table.add_row(
            label,
            f"{len(rec.reported)}/{len(rec.selected)}",
            str(rec.examples),
            fmt(train, "loss"),
            fmt(fed, "accuracy"),
            fmt(test, "accuracy"),
            f"{rec.duration_s:.2f}",
            f"{rec.bytes_in / 1e6:.1f}",
            f"{rec.bytes_out / 1e6:.1f}",
            *(f"{eps[v]:.3f}" if v in eps else "-" for v in levels),
        )
    return table
