"""Read-only views of run directories (the run store's SQLite), for the status page.

A run directory is what :class:`fedhive.server.store.RunStore` writes: ``run.sqlite`` (meta,
rounds, events) beside ``config.json``, ``models/`` and ``events.jsonl``. The page opens the
database read-only (``mode=ro``: it never creates, migrates or locks a run for writing), so it can
read a run while its coordinator writes it (WAL mode), and reads runs no coordinator serves.
One coordinator serves one run directory; a service keeps one per run under ``STATE_DIR/runs``:
:class:`RunDirs` covers both.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DB_NAME = "run.sqlite"
BUSY_TIMEOUT_S = 2.0
MAX_RUNS_LISTED = 200  # the newest this many run directories (a long-lived service has more)


@dataclass(frozen=True)
class RunDirs:
    """Where the runs are: fixed directories, or every run directory under a folder."""

    dirs: tuple[Path, ...] = ()
    parent: Path | None = None  # e.g. STATE_DIR/runs: each of its folders with a run.sqlite

    @classmethod
    def single(cls, run_dir: Path) -> RunDirs:
        return cls(dirs=(Path(run_dir),))

    @classmethod
    def under(cls, parent: Path) -> RunDirs:
        return cls(parent=Path(parent))

    def list(self) -> list[Path]:
        found = [d for d in self.dirs if (d / DB_NAME).exists()]
        if self.parent is not None and self.parent.is_dir():
            children = [d for d in self.parent.iterdir() if (d / DB_NAME).exists()]
            children.sort(key=lambda d: (d / DB_NAME).stat().st_mtime, reverse=True)
            found += children[:MAX_RUNS_LISTED]
        return found


def _connect(run_dir: Path) -> sqlite3.Connection:
    uri = (run_dir / DB_NAME).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def round_row(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows of one stored round event."""
    row: dict[str, Any] = {
        "event": event.get("event"),
        "round": event.get("round"),
        "attempt": event.get("attempt"),
        "committed": bool(event.get("committed")),
        "reason": event.get("reason"),
        "nodes": len(event.get("reported") or []),
        "selected": len(event.get("selected") or []),
        "duration_s": _number(event.get("duration_s")),
        "bytes_in": _number(event.get("bytes_in")),
        "bytes_out": _number(event.get("bytes_out")),
        "time": _number(event.get("time")),
        "refused": dict(event.get("refused") or {}),
        "dropped": list(event.get("dropped") or []),
    }
    for section in ("train", "evaluate", "server_evaluate"):
        metrics = event.get(section) or {}
        row[section] = {
            k: v for k in ("accuracy", "loss") if (v := _number(metrics.get(k))) is not None
        }
    return row


def read_run(run_dir: Path, max_rounds: int) -> dict[str, Any]:
    """One run: its id, settings, the last ``max_rounds`` round events, its state."""
    db = _connect(run_dir)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        committed = db.execute("SELECT COALESCE(MAX(round), 0) FROM rounds").fetchone()[0]
        # per-node detail left in SQLite: a round of a thousand nodes stays a short line here
        rows = db.execute(
            "SELECT json_remove(body, '$.nodes') FROM events ORDER BY id DESC LIMIT ?",
            (max_rounds,),
        ).fetchall()
        last = db.execute("SELECT body FROM events ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        db.close()
    events = [json.loads(r[0]) for r in reversed(rows)]
    settings = json.loads(meta.get("config", "{}"))
    last_event = json.loads(last[0]).get("event") if last else None
    return {
        "run_id": meta.get("run_id", run_dir.name),
        "run_dir": str(run_dir),
        "task": settings.get("task"),
        "strategy": settings.get("strategy"),
        "rounds": settings.get("rounds"),
        "committed_round": int(committed),
        "finished": last_event == "finished",
        "rounds_shown": [round_row(e) for e in events if e.get("event") in ("round", "evaluate")],
    }


def read_runs(
    dirs: RunDirs, max_rounds: int, live: Callable[[str], Any] | None = None
) -> list[Any]:
    """Every run ``dirs`` names (a damaged or half-created one listed with its error)."""
    out: list[Any] = []
    for run_dir in dirs.list():
        try:
            run = read_run(run_dir, max_rounds)
        except (sqlite3.Error, OSError, ValueError) as exc:
            out.append({"run_id": run_dir.name, "run_dir": str(run_dir), "error": str(exc)})
            continue
        if live is not None:
            run["live"] = live(run["run_id"])
        out.append(run)
    return out
