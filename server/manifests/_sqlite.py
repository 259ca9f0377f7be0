"""The run store in a SQLite file: the default, no server needed.

Retention deletes rows in short statements; SQLite keeps the pages they free in the file
and reuses them for the runs stored next, so a store under retention stops growing rather
than shrinking (no incremental vacuum: a file made without `auto_vacuum` would need a full
VACUUM to take it). `sqlite3 runs.sqlite3 VACUUM`, with the servers stopped, gives the
space back to the file system.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._store import ACTIVE_INDEX, COLUMNS, RunStore, RunStoreError, RunStoreUnavailable

__all__ = ["SQLiteRunStore", "cannot_write"]

log = logging.getLogger("scillm.server")

#: SQLite's primary result codes that say the file cannot be written now (full disk, I/O
#: error, read-only, busy or locked past the timeout, cannot open): the store is
#: unavailable, as a PostgreSQL store whose server went away is. Others are bugs.
_UNAVAILABLE_CODES = frozenset({5, 6, 8, 10, 13, 14})  # BUSY LOCKED READONLY IOERR FULL CANTOPEN

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
    events       TEXT NOT NULL DEFAULT '[]',
    active_time  TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_session ON runs (session_id, track, start_time);
"""


def cannot_write(exc: sqlite3.Error) -> bool:
    """Whether `exc` says the database cannot be written now (full, I/O, read-only, busy,
    locked, cannot open): the store is unavailable, rather than the statement wrong."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _UNAVAILABLE_CODES


class SQLiteRunStore(RunStore):
    """SQLite-backed run store (path ':memory:' keeps it in memory)."""

    _UPSERT = (f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) "
               f"VALUES ({', '.join('?' * len(COLUMNS))})")

    def __init__(self, path: Path | str = ":memory:", *, create: bool = True) -> None:
        super().__init__()
        self.path = self.location = str(path)
        self._failing = False  # the last statement failed for want of room, I/O, ...
        if self.path != ":memory:":
            if not create and not Path(self.path).exists():
                raise RunStoreError(f"no run store at {self.path}")
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            self._db.executescript(_SCHEMA)
            if create:
                self._ensure_upgraded()
        except sqlite3.Error as exc:  # not a database, unreadable, a directory, ...
            raise RunStoreError(f"cannot open the run store at {self.path}: {exc}") from None

    def _has_active_time(self) -> bool:
        return any(row[1] == "active_time" for row in self._run("PRAGMA table_info(runs)", ()))

    def _upgrade(self) -> None:
        if not self._has_active_time():
            try:
                self._run("ALTER TABLE runs ADD COLUMN active_time TEXT NOT NULL DEFAULT ''", ())
            except sqlite3.OperationalError:
                if not self._has_active_time():  # else another process added it first
                    raise
        self._run(ACTIVE_INDEX, ())

    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        try:
            with self._lock, self._db:
                rows = self._db.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            if not cannot_write(exc):
                raise
            # A full disk failed every stored call as INTERNAL with a traceback: it is the
            # store being unavailable (UNAVAILABLE, naming it), said once in the log.
            if not self._failing:
                self._failing = True
                log.warning("run store %s cannot write: %s (calls that store a run fail "
                            "with UNAVAILABLE until it can)", self.path, exc)
            raise RunStoreUnavailable(f"the run store at {self.path} cannot write: "
                                      f"{exc}") from None
        if self._failing and not sql.lstrip().upper().startswith("SELECT"):
            self._failing = False
            log.info("run store %s writes again", self.path)
        return rows

    def close(self) -> None:
        with self._lock:
            self._db.close()
