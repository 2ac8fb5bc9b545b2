"""A run's name in the service's queue: one run per name for good, an idempotency key."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
from pathlib import Path

import pytest

from fedhive.common.config import ServerConfig
from fedhive.common.errors import InvalidUpdateError, RunNameTakenError
from fedhive.common.status_config import StatusConfig
from fedhive.server.service.queue import FINISHED, QUEUED, RunQueue
from fedhive.server.service.service import Service
from fedhive.server.store import RunStore

TASK = "fedhive.common.tasks.constant:make_task"
SETTINGS = {"task": TASK, "rounds": 3}

# the queue's schema before runs had names (as the previous release wrote service.sqlite)
OLD_SCHEMA = """
CREATE TABLE runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    settings TEXT NOT NULL,
    submitted_by TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    caller TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
INSERT INTO runs(run_id, state, settings, submitted_by, submitted_at)
    VALUES ('0123456789abcdef', 'finished', '{"task": "x:y"}', 'admin:old', 1.0);
"""


def test_a_name_submitted_again_answers_its_run_in_any_state_and_queues_nothing(
    tmp_path: Path,
) -> None:
    # Prepare
    queue = RunQueue(tmp_path / "service.sqlite")
    first = queue.submit_once(SETTINGS, "admin:a", "rehearsal")

    # Execute: again while queued; then once it has finished, by another administrator, with
    # the same settings in another order; after a restart too
    again = queue.submit_once(dict(reversed(SETTINGS.items())), "admin:b", "rehearsal")
    queue.next()
    queue.end(first.entry.run_id, FINISHED)
    later = queue.submit_once(SETTINGS, "admin:b", "rehearsal")
    other = queue.submit_once(SETTINGS, "admin:a", "other")
    queue.close()
    reopened = RunQueue(tmp_path / "service.sqlite")
    restarted = reopened.submit_once(SETTINGS, "admin:a", "rehearsal")
    unnamed = [reopened.submit(SETTINGS, "admin:a") for _ in range(2)]

    # Assert
    assert not first.existed and first.entry.name == "rehearsal" and first.entry.state == QUEUED
    assert again.existed and again.entry.run_id == first.entry.run_id
    assert again.entry.state == QUEUED
    assert later.existed and later.entry.state == FINISHED
    assert later.entry.submitted_by == "admin:a"
    assert not other.existed and other.entry.run_id != first.entry.run_id
    assert restarted.existed and restarted.entry.run_id == first.entry.run_id
    assert [e.name for e in unnamed] == ["", ""]
    assert [e.name for e in reopened.runs()] == ["rehearsal", "other", "", ""]


def test_a_name_reused_with_other_settings_is_refused(tmp_path: Path) -> None:
    # Prepare
    queue = RunQueue(None)
    first = queue.submit_once(SETTINGS, "admin:a", "rehearsal")

    # Execute
    with pytest.raises(RunNameTakenError) as refused:
        queue.submit_once({**SETTINGS, "rounds": 4}, "admin:a", "rehearsal")

    # Assert
    assert "rehearsal" in str(refused.value) and first.entry.run_id in str(refused.value)
    assert "other settings" in str(refused.value)
    assert [e.run_id for e in queue.runs()] == [first.entry.run_id]


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "two words", "a/b", "naïve", "tab\there", "semi;colon"]
)
def test_a_name_outside_its_rule_is_refused_naming_the_rule(name: str) -> None:
    # Prepare
    queue = RunQueue(None)

    # Execute
    with pytest.raises(InvalidUpdateError) as refused:
        queue.submit_once(SETTINGS, "admin:a", name)

    # Assert
    assert "1 to 64 characters of A-Z a-z 0-9 . _ -" in str(refused.value)
    assert queue.runs() == []


def test_concurrent_submissions_of_one_name_queue_one_run(tmp_path: Path) -> None:
    # Prepare
    queue = RunQueue(tmp_path / "service.sqlite")
    start = threading.Barrier(8)
    results = []

    def submit() -> None:
        start.wait(timeout=10)
        results.append(queue.submit_once(SETTINGS, "admin:a", "rehearsal.v1-2_x"))

    threads = [threading.Thread(target=submit) for _ in range(8)]

    # Execute
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)

    # Assert
    assert len(results) == 8
    assert sorted(r.existed for r in results) == [False] + [True] * 7
    assert len({r.entry.run_id for r in results}) == 1
    assert len(queue.runs()) == 1


def test_a_queue_written_before_runs_had_names_opens_and_takes_names(tmp_path: Path) -> None:
    # Prepare: service.sqlite as the previous schema wrote it, one finished run in it
    path = tmp_path / "service.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    db.close()

    # Execute
    queue = RunQueue(path)
    old = queue.get("0123456789abcdef")
    named = queue.submit_once(SETTINGS, "admin:a", "rehearsal")
    again = queue.submit_once(SETTINGS, "admin:a", "rehearsal")
    queue.close()

    # Assert: the old run kept, unnamed; the name unique (the index exists)
    assert old.state == FINISHED and old.name == "" and old.submitted_by == "admin:old"
    assert again.existed and again.entry.run_id == named.entry.run_id
    with sqlite3.connect(path) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO runs(run_id, state, settings, submitted_by, submitted_at, name) "
            "VALUES ('x', 'queued', '{}', 'me', 0, 'rehearsal')"
        )
    db.close()


def test_the_status_page_shows_a_named_runs_name(tmp_path: Path) -> None:
    # Prepare: a service with its status page; a named and an unnamed run, each with its run
    # directory as a started run has one
    base = ServerConfig(
        address="127.0.0.1:0", insecure=True, progress=False, status=StatusConfig(port=0)
    )
    service = Service(base, tmp_path / "state")
    service.start()
    try:
        named = service.submit_once(SETTINGS, "admin:a", "rehearsal").entry
        unnamed = service.submit(SETTINGS, "admin:a")
        for entry in (named, unnamed):
            store = RunStore(service.run_dir(entry))
            store.create(ServerConfig(insecure=True).model_dump(mode="json"), entry.run_id)
            store.close()

        # Execute
        with urllib.request.urlopen(service.status.server.url + "api/status", timeout=10) as r:
            runs = json.loads(r.read())["runs"]
    finally:
        service.stop(0)

    # Assert
    assert {run["run_id"]: run["name"] for run in runs} == {
        named.run_id: "rehearsal",
        unnamed.run_id: "",
    }
