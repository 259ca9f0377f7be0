"""The run store in a SQLite file: the default, no server needed."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._store import COLUMNS, RunStore, RunStoreError

__all__ = ["SQLiteRunStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id       TEXT PRIMARY KEY,
    service      TEXT NOT NULL,
    session_id   TEXT NOT NULL,
    track        TEXT NOT NULL,
    model        TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    start_time   TEXT NOT NULL,
    manifest     BLOB NOT NULL,
    request_type TEXT NOT NULL,
    request      BLOB NOT NULL,
    result_type  TEXT NOT NULL,
    result       BLOB NOT NULL,
    events       TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS runs_session ON runs (session_id, track, start_time);
"""


class SQLiteRunStore(RunStore):
    """SQLite-backed run store (path ':memory:' keeps it in memory)."""

    _UPSERT = (f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(COLUMNS))})")

    def __init__(self, path: Path | str = ":memory:", *, create: bool = True) -> None:
        super().__init__()
        self.path = self.location = str(path)
        if self.path != ":memory:":
            if not create and not Path(self.path).exists():
                raise RunStoreError(f"no run store at {self.path}")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:  # not a database, unreadable, a directory, ...
            raise RunStoreError(f"cannot open the run store at {self.path}: {exc}") from None

    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        with self._lock, self._db:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()
