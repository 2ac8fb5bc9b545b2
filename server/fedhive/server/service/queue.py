"""The service's queue of runs and its audit table: ``STATE_DIR/service.sqlite``.

::

    runs   (seq, run_id, state, settings, submitted_by, submitted_at, started_at, ended_at, reason,
            name)
    audit  (id, time, caller, action, target, outcome, detail)

A run moves ``queued -> running -> finished | aborted | stopped | failed``, or ``queued ->
cancelled``. While a run is ``running`` its ``reason`` is empty unless an administrator asked to
stop it (:meth:`RunQueue.request_stop`): the request is durable, so a service killed before the run
stopped stops it on restart; a run that finishes anyway ends ``finished``. A run may have a name
(:meth:`RunQueue.submit_once`), unique in the queue for good whatever the run's state: the run's
identity, as an idempotency key (submitting the name again queues nothing and answers the run that
has it; refused if the settings differ). The queue is FIFO by
``seq``; at most one run is ``running``. Every change is one SQLite transaction (WAL, synchronous
FULL): a service killed at any instant finds on restart the run it was running (still ``running``:
it resumes from the run's own directory) and its queue. Without a state directory (the one-shot
``fedhive server``) the same tables live in memory.
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhive.common.errors import (
    FedhiveError,
    InvalidUpdateError,
    LimitExceededError,
    RunNameTakenError,
    RunStateError,
    UnknownRunError,
)

QUEUED, RUNNING = "queued", "running"
FINISHED, ABORTED, STOPPED, FAILED, CANCELLED = (
    "finished",
    "aborted",
    "stopped",
    "failed",
    "cancelled",
)
ENDED = frozenset({FINISHED, ABORTED, STOPPED, FAILED, CANCELLED})
MAX_QUEUED = 1000  # runs waiting at once: a submission beyond it is refused
MAX_REASON = 2000  # characters of a run's recorded reason
MAX_AUDIT = 100_000  # audit rows kept (the oldest are dropped beyond it)
MAX_RUN_NAME = 64
RUN_NAME = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_RUN_NAME}}}")
RUN_NAME_RULE = f"1 to {MAX_RUN_NAME} characters of A-Z a-z 0-9 . _ -"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    name TEXT
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    caller TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""
# after any migration (a queue written before runs had names gets the column first)
NAME_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS runs_name ON runs(name)"  # NULLs: no name


@dataclass(frozen=True)
class RunEntry:
    seq: int
    run_id: str
    state: str
    settings: dict[str, Any]  # the run's own settings, as submitted (validated)
    submitted_by: str
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    reason: str
    name: str = ""  # "" when submitted without one

    @property
    def task(self) -> str:
        return str(self.settings.get("task", ""))


@dataclass(frozen=True)
class AuditRecord:
    time: float
    caller: str
    action: str
    target: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class Submission:
    entry: RunEntry
    existed: bool  # the name was taken already: nothing was queued, ``entry`` is that run


COLUMNS = (
    "seq, run_id, state, settings, submitted_by, submitted_at, started_at, ended_at, reason, name"
)


def _entry(row: tuple[Any, ...]) -> RunEntry:
    seq, run_id, state, settings, by, at, started, ended, reason, name = row
    return RunEntry(
        int(seq), str(run_id), str(state), json.loads(settings), str(by), float(at),
        started, ended, str(reason), str(name or ""),
    )  # fmt: skip


def check_run_name(text: str) -> str:
    """A run's name as given (refused unless it follows :data:`RUN_NAME_RULE`)."""
    if not RUN_NAME.fullmatch(text):
        shown = text[: MAX_RUN_NAME + 1]
        raise InvalidUpdateError(f"run name {shown!r} is not {RUN_NAME_RULE}")
    return text


def canonical(settings: Mapping[str, Any]) -> str:
    """The settings as the queue stores and compares them."""
    return json.dumps(dict(settings), sort_keys=True, default=str)


class RunQueue:
    """Thread-safe; ``path`` None: in memory (a one-shot service)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        target = str(path) if path is not None else ":memory:"
        try:
            db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
            if path is not None:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "name" not in columns:  # a queue written before runs had names
                db.execute("ALTER TABLE runs ADD COLUMN name TEXT")
            db.execute(NAME_INDEX)
        except sqlite3.Error as exc:
            raise FedhiveError(f"cannot open the service's queue {target}: {exc}") from exc
        self._db = db
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)  # notified on every change

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _one(self, run_id: str) -> RunEntry:
        row = self._db.execute(f"SELECT {COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRunError(f"no run {run_id!r} in this service's queue")
        return _entry(row)

    def submit(
        self, settings: Mapping[str, Any], submitted_by: str, run_id: str | None = None
    ) -> RunEntry:
        with self._lock:
            return self._insert(canonical(settings), submitted_by, run_id, None)

    def submit_once(self, settings: Mapping[str, Any], submitted_by: str, name: str) -> Submission:
        """Queue a run named ``name`` unless a run of that name exists, in any state: then it is
        that run (``existed``), or a RunNameTakenError if its settings differ. Atomic: of
        concurrent submissions of one name, one queues the run."""
        name = check_run_name(name)
        body = canonical(settings)
        with self._lock:
            row = self._db.execute(f"SELECT {COLUMNS} FROM runs WHERE name = ?", (name,)).fetchone()
            if row is None:
                return Submission(self._insert(body, submitted_by, None, name), False)
            entry = _entry(row)
            if canonical(entry.settings) != body:
                raise RunNameTakenError(
                    f"run name {name!r} is taken by run {entry.run_id} ({entry.state}) with "
                    "other settings: a name is one run's; give another run another name"
                )
            return Submission(entry, True)

    def _insert(self, body: str, by: str, run_id: str | None, name: str | None) -> RunEntry:
        """(Under the lock.)"""
        run_id = run_id or secrets.token_hex(8)
        waiting = self._db.execute(
            "SELECT COUNT(*) FROM runs WHERE state = ?", (QUEUED,)
        ).fetchone()[0]
        if waiting >= MAX_QUEUED:
            raise LimitExceededError(
                f"the queue already holds {waiting} runs (at most {MAX_QUEUED})"
            )
        self._db.execute(
            "INSERT INTO runs(run_id, state, settings, submitted_by, submitted_at, name) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (run_id, QUEUED, body, by, time.time(), name),
        )
        self.changed.notify_all()
        return self._one(run_id)

    def get(self, run_id: str) -> RunEntry:
        with self._lock:
            return self._one(run_id)

    def runs(self, limit: int = 1000) -> list[RunEntry]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {COLUMNS} FROM runs ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [_entry(r) for r in reversed(rows)]

    def names(self) -> dict[str, str]:
        """Run id -> name, of the runs that have one."""
        with self._lock:
            rows = self._db.execute("SELECT run_id, name FROM runs WHERE name IS NOT NULL")
            return {str(run_id): str(name) for run_id, name in rows.fetchall()}

    def queued(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) FROM runs WHERE state = ?", (QUEUED,))
            return int(row.fetchone()[0])

    def running(self) -> RunEntry | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM runs WHERE state = ? ORDER BY seq LIMIT 1", (RUNNING,)
            ).fetchone()
        return _entry(row) if row is not None else None

    def next(self) -> RunEntry | None:
        """The run to run now: the one still ``running`` (a restart resumes it), else the oldest
        queued one, marked running."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM runs WHERE state = ? ORDER BY seq LIMIT 1", (RUNNING,)
            ).fetchone()
            if row is not None:
                return _entry(row)
            row = self._db.execute(
                f"SELECT {COLUMNS} FROM runs WHERE state = ? ORDER BY seq LIMIT 1", (QUEUED,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute(
                "UPDATE runs SET state = ?, started_at = ? WHERE run_id = ?",
                (RUNNING, time.time(), row[1]),
            )
            self.changed.notify_all()
            return self._one(row[1])

    def end(self, run_id: str, state: str, reason: str = "") -> RunEntry:
        """A run left ``running`` (or ``queued``, when cancelled) for good."""
        if state not in ENDED:
            raise ValueError(f"not an end state: {state}")
        with self._lock:
            entry = self._one(run_id)
            if entry.state in ENDED:  # e.g. stopped by an administrator, then its run ended
                return entry
            self._db.execute(
                "UPDATE runs SET state = ?, ended_at = ?, reason = ? WHERE run_id = ?",
                (state, time.time(), reason[:MAX_REASON], run_id),
            )
            self.changed.notify_all()
            return self._one(run_id)

    def request_stop(self, run_id: str, reason: str) -> RunEntry:
        """Record an administrator's stop of a running run (it stays ``running`` until it ends;
        :meth:`end` then writes the state it ended in)."""
        with self._lock:
            self._db.execute(
                "UPDATE runs SET reason = ? WHERE run_id = ? AND state = ?",
                (reason[:MAX_REASON], run_id, RUNNING),
            )
            self.changed.notify_all()
            return self._one(run_id)

    def wait_ended(self, run_id: str, timeout: float) -> RunEntry:
        """The run once it has ended, or as it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                entry = self._one(run_id)
                remaining = deadline - time.monotonic()
                if entry.state in ENDED or remaining <= 0:
                    return entry
                self.changed.wait(remaining)

    def cancel(self, run_id: str, reason: str) -> RunEntry:
        with self._lock:
            entry = self._one(run_id)
            if entry.state != QUEUED:
                raise RunStateError(
                    f"run {run_id} is {entry.state}: only a queued run is cancelled"
                )
            self._db.execute(
                "UPDATE runs SET state = ?, ended_at = ?, reason = ? WHERE run_id = ?",
                (CANCELLED, time.time(), reason[:MAX_REASON], run_id),
            )
            self.changed.notify_all()
            return self._one(run_id)

    def wait_change(self, timeout: float) -> None:
        with self._lock:
            self.changed.wait(timeout)

    # ------------------------------------------------------------------ audit

    def audit(self, caller: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        with self._lock, self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO audit(time, caller, action, target, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    time.time(),
                    caller[:MAX_REASON],
                    action,
                    target[:MAX_REASON],
                    outcome[:MAX_REASON],
                    detail[:MAX_REASON],
                ),
            )
            self._db.execute(
                "DELETE FROM audit WHERE id <= (SELECT MAX(id) FROM audit) - ?", (MAX_AUDIT,)
            )

    def audit_log(self, limit: int = 1000) -> list[AuditRecord]:
        with self._lock:
            rows = self._db.execute(
                "SELECT time, caller, action, target, outcome, detail FROM audit "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [AuditRecord(float(t), *map(str, rest)) for t, *rest in reversed(rows)]
