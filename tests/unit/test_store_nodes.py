"""The run store keeps each node's secure-aggregation identity, also in an older run directory."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from fedhive.server.store import RunStore

OLD_NODES = """CREATE TABLE nodes (
    node_id TEXT PRIMARY KEY, name TEXT NOT NULL, token_sha256 BLOB NOT NULL, seq INTEGER NOT NULL
)"""


def test_an_older_run_directory_gets_the_identity_columns(tmp_path: Path) -> None:
    # Prepare: a run database written before identities were stored, with one node
    with sqlite3.connect(tmp_path / "run.sqlite") as db:
        db.execute(OLD_NODES)
        db.execute("INSERT INTO nodes VALUES ('site-a', 'site-a', x'00', 1)")
    db.close()
    store = RunStore(tmp_path)

    # Execute
    before = store.node_identities()
    store.add_node("site-b", "site-b", b"token", 2, b"key", b"cert")
    after = store.node_identities()
    store.close()

    # Assert: the old node has no identity; the new one has its own
    assert before == {"site-a": (b"", b"")}
    assert after == {"site-a": (b"", b""), "site-b": (b"key", b"cert")}
