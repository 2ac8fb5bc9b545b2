"""The run directory: what a restarted coordinator reads to continue a run.

::

    RUN_DIR/config.json                     the run's config (its hash is checked on resume)
    RUN_DIR/run.sqlite                      meta, rounds, nodes, strategy state, events (WAL mode)
    RUN_DIR/models/round-0007.safetensors   global model after round 7 (round 0 = initial)
    RUN_DIR/events.jsonl                    one line per event, for people and plots

Commit order for a round: the model file is written to a temp name, fsynced and renamed; then one
SQLite transaction records the round (with the model file's SHA-256), the strategy state and the
round's event. SQLite is the authority: a model file without its row (a crash between the two
steps) is ignored and overwritten, and ``events.jsonl`` is re-exported from SQLite on resume.
A crash at any instant therefore leaves either the old round or the new one, never a torn state.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedhive.common.config import ServerConfig
from fedhive.common.data.safetensors_io import SafetensorsFile, fsync_dir, write_safetensors
from fedhive.common.errors import ConfigError, FedhiveError
from fedhive.common.wire.tensors import TensorSpec

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rounds (
    round INTEGER PRIMARY KEY,
    model_file TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    committed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS strategy_state (round INTEGER PRIMARY KEY, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    node_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_sha256 BLOB NOT NULL,
    seq INTEGER NOT NULL,
    identity_key BLOB NOT NULL DEFAULT x'',
    identity_cert BLOB NOT NULL DEFAULT x''
);
CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL);
"""

# Settings that may change between a run and its resumption without changing the run.
OPERATIONAL_FIELDS = frozenset(
    {
        "address",
        "run_dir",
        "progress",
        "max_workers",
        "spool_dir",
        "spool_memory_bytes",
        "spool_wait_s",
        "receive_window_bytes",
        "broadcast_memory_bytes",
        "join_timeout_s",
        "status",
    }
)


class StoreError(FedhiveError):
    """The run directory is damaged or does not belong to this run."""


def config_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(config.items()) if k not in OPERATIONAL_FIELDS}


def config_hash(config: Mapping[str, Any]) -> str:
    blob = json.dumps(config_identity(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def setting_defaults() -> dict[str, Any]:
    """Every ServerConfig setting's default, as the run's stored settings write it (JSON)."""
    defaults = {
        name: field.get_default(call_default_factory=True)
        for name, field in ServerConfig.model_fields.items()
    }
    loaded: dict[str, Any] = json.loads(json.dumps(defaults, default=str))
    return loaded


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    round: int  # last committed round (0 = only the initial model; -1 = not even that)
    model_path: Path | None
    strategy_state: dict[str, Any]
    next_node_seq: int
    finished: bool = False  # the run ended (every round and its final evaluation are recorded)


class RunStore:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.models_dir = self.run_dir / "models"
        self.events_path = self.run_dir / "events.jsonl"
        self.db_path = self.run_dir / "run.sqlite"
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._written: dict[Path, str] = {}  # SHA-256 of model files written by this process

    # ------------------------------------------------------------------ lifecycle

    def exists(self) -> bool:
        return self.db_path.exists()

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            _add_identity_columns(db)
            self._db = db
        return self._db

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def create(self, config: Mapping[str, Any], run_id: str) -> None:
        """Start a new run in an empty (or absent) run directory."""
        if self.exists():
            raise StoreError(f"{self.run_dir} already holds a run")
        self.models_dir.mkdir(parents=True, exist_ok=True)
        body = json.dumps(config, indent=2, sort_keys=True, default=str)
        tmp = self.run_dir / ".config.json.tmp"
        tmp.write_text(body + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir / "config.json")
        # Built under a temp name and renamed: a crash never leaves a database without its meta.
        tmp_db = self.run_dir / ".run.sqlite.tmp"
        tmp_db.unlink(missing_ok=True)
        db = sqlite3.connect(tmp_db, isolation_level=None)
        try:
            db.executescript(SCHEMA)
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT INTO meta(key, value) VALUES (?, ?)",
                    [("run_id", run_id), ("config_hash", config_hash(config)), ("config", body)],
                )
        finally:
            db.close()
        with open(tmp_db, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp_db, self.db_path)
        fsync_dir(self.run_dir)
        self.events_path.unlink(missing_ok=True)

    def open_existing(self, config: Mapping[str, Any]) -> ResumePoint:
        """Check that ``config`` matches the stored run and return where to continue."""
        with self._lock:
            db = self._connect()
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if "config_hash" not in meta:
                raise StoreError(f"{self.db_path} is not a fedhive run database")
            if meta["config_hash"] != config_hash(config):
                stored = config_identity(json.loads(meta["config"]))
                given = config_identity(json.loads(json.dumps(config, default=str)))
                # a setting added by a later fedhive, at its default, is no difference
                defaults = setting_defaults()
                for key in set(given) - set(stored):
                    if key in defaults:
                        stored[key] = defaults[key]
                diff = sorted(k for k in set(stored) | set(given) if stored.get(k) != given.get(k))
            else:
                diff = []
            if diff:
                raise ConfigError(
                    f"{self.run_dir} holds a run with another configuration (differs in: "
                    f"{', '.join(diff)}); use another --run-dir, or the original settings to resume"
                )
            row = db.execute(
                "SELECT round, model_file, model_sha256 FROM rounds ORDER BY round DESC LIMIT 1"
            ).fetchone()
            state_row = db.execute(
                "SELECT state FROM strategy_state ORDER BY round DESC LIMIT 1"
            ).fetchone()
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) FROM nodes").fetchone()[0]
        if row is None:  # created, then stopped before the initial model was committed
            return ResumePoint(meta["run_id"], -1, None, {}, int(seq))
        number, name, digest = row
        path = self.models_dir / name
        if not path.exists() or file_sha256(path) != digest:
            raise StoreError(f"{path}: missing or does not match its recorded SHA-256")
        self.export_events()
        return ResumePoint(
            run_id=meta["run_id"],
            round=int(number),
            model_path=path,
            strategy_state=json.loads(state_row[0]) if state_row else {},
            next_node_seq=int(seq),
            finished=any(e["event"] == "finished" for e in self.events()),
        )

    # ------------------------------------------------------------------ models and rounds

    def model_path(self, round_: int) -> Path:
        return self.models_dir / f"round-{round_:04d}.safetensors"

    def write_model(
        self,
        round_: int,
        specs: Sequence[TensorSpec],
        buffers: Iterable[memoryview | bytes],
        metadata: Mapping[str, str] | None = None,
    ) -> Path:
        path = self.model_path(round_)
        digest = hashlib.sha256()
        meta = {"round": str(round_), **(metadata or {})}
        write_safetensors(path, specs, buffers, meta, hasher=digest)
        self._written[path] = digest.hexdigest()  # commit_round need not read the file again
        return path

    def read_model(self, round_: int) -> SafetensorsFile:
        return SafetensorsFile(self.model_path(round_))

    def commit_round(
        self,
        round_: int,
        model_path: Path,
        event: Mapping[str, Any] | None,
        strategy_state: Mapping[str, Any] | None = None,
        committed_at: float = 0.0,
    ) -> None:
        """One transaction: the round, its model's digest, the strategy state, its event."""
        digest = self._written.pop(model_path, None) or file_sha256(model_path)
        line = _event_line(event) if event else None
        with self._lock:
            db = self._connect()
            with db:
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "INSERT OR REPLACE INTO rounds(round, model_file, model_sha256, committed_at) "
                    "VALUES (?, ?, ?, ?)",
                    (round_, model_path.name, digest, committed_at),
                )
                db.execute(
                    "INSERT OR REPLACE INTO strategy_state(round, state) VALUES (?, ?)",
                    (round_, json.dumps(dict(strategy_state or {}), sort_keys=True)),
                )
                if line is not None:
                    db.execute("INSERT INTO events(body) VALUES (?)", (line,))
        if line is not None:
            self._append_line(line)

    def committed_rounds(self) -> list[int]:
        with self._lock:
            rows = self._connect().execute("SELECT round FROM rounds ORDER BY round").fetchall()
        return [int(r[0]) for r in rows]

    # ------------------------------------------------------------------ nodes

    def add_node(
        self,
        node_id: str,
        name: str,
        token: bytes,
        seq: int,
        identity_key: bytes = b"",
        identity_cert: bytes = b"",
    ) -> None:
        """A node's credentials and its secure-aggregation identity (a resumed coordinator
        knows both for the nodes that reconnect without joining again)."""
        with self._lock:
            db = self._connect()
            with db:
                db.execute(
                    "INSERT OR REPLACE INTO nodes(node_id, name, token_sha256, seq, identity_key, "
                    "identity_cert) VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        node_id,
                        name,
                        hashlib.sha256(token).digest(),
                        seq,
                        identity_key,
                        identity_cert,
                    ),
                )

    def node_identities(self) -> dict[str, tuple[bytes, bytes]]:
        """Each node's stored identity key and certificate (DER), by node id."""
        with self._lock:
            rows = (
                self._connect()
                .execute("SELECT node_id, identity_key, identity_cert FROM nodes")
                .fetchall()
            )
        return {str(a): (bytes(b), bytes(c)) for a, b, c in rows}

    def nodes(self) -> list[tuple[str, str, bytes]]:
        with self._lock:
            rows = (
                self._connect()
                .execute("SELECT node_id, name, token_sha256 FROM nodes ORDER BY seq")
                .fetchall()
            )
        return [(str(a), str(b), bytes(c)) for a, b, c in rows]

    # ------------------------------------------------------------------ events

    def append_event(self, event: Mapping[str, Any]) -> None:
        line = _event_line(event)
        with self._lock:
            db = self._connect()
            with db:
                db.execute("INSERT INTO events(body) VALUES (?)", (line,))
        self._append_line(line)

    def _append_line(self, line: str) -> None:
        with open(self.events_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def export_events(self) -> None:
        """Rewrite events.jsonl from the database (atomically)."""
        with self._lock:
            rows = self._connect().execute("SELECT body FROM events ORDER BY id").fetchall()
        tmp = self.run_dir / ".events.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(r[0] + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.events_path)

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connect().execute("SELECT body FROM events ORDER BY id").fetchall()
        return [json.loads(r[0]) for r in rows]


def _add_identity_columns(db: sqlite3.Connection) -> None:
    """A run directory written before the nodes' identities were stored gets their columns."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
    for column in ("identity_key", "identity_cert"):
        if column not in columns:
            db.execute(f"ALTER TABLE nodes ADD COLUMN {column} BLOB NOT NULL DEFAULT x''")


def _event_line(event: Mapping[str, Any]) -> str:
    """One events.jsonl line (a RoundRecord leaves out its absent fields)."""
    return json.dumps(dict(event), sort_keys=True, separators=(",", ":"))


def read_events(run_dir: Path, after: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
    """(id, events.jsonl line) of a run's events after ``after``, read-only: for watchers beside
    the running coordinator (nothing is created; a run not started yet has none)."""
    path = Path(run_dir) / "run.sqlite"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            rows = db.execute(
                "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the events of {run_dir}: {exc}") from exc
    return [(int(i), str(b)) for i, b in rows]


def read_committed(run_dir: Path) -> int:
    """A run's last committed round, read-only (0: none yet, or not started)."""
    path = Path(run_dir) / "run.sqlite"
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT MAX(round) FROM rounds").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read the rounds of {run_dir}: {exc}") from exc
    return int(row[0]) if row is not None and row[0] is not None else 0
