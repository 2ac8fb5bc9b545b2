"""RoundRecord: a frozen, typed round record that reads and serializes as its events.jsonl line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fedhive.common.record import RoundRecord
from fedhive.server.store import RunStore

LINE = {
    "event": "round",
    "round": 2,
    "attempt": 0,
    "selected": ["a-1", "b-2"],
    "refused": {"b-2": "declined: busy"},
    "dropped": [],
    "duration_s": 1.5,
    "bytes_in": 10,
    "bytes_out": 20,
    "time": 123.0,
    "reported": ["a-1"],
    "examples": 7,
    "committed": False,
    "reason": "1 update(s) accepted, 2 needed",
}


def test_a_record_reads_and_writes_as_its_event_line(tmp_path: Path) -> None:
    # Prepare
    record = RoundRecord.from_event(LINE)
    store = RunStore(tmp_path / "run")

    # Execute
    store.append_event(record)
    store.close()
    written = (tmp_path / "run" / "events.jsonl").read_text().splitlines()

    # Assert: absent fields are left out, the line is the dict's line, the record is a mapping
    assert written == [json.dumps(LINE, sort_keys=True, separators=(",", ":"))]
    assert record.to_event() == LINE and record == LINE
    assert record["reason"] == LINE["reason"] and "train" not in record
    with pytest.raises(KeyError):
        record["train"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.committed = True  # type: ignore[misc]
