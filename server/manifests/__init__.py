"""Run manifests: the record every run leaves (run_id, request_id, items, session, track),
the run store (SQLite by default, PostgreSQL by URL), and replay."""

from ._manifest import ManifestClock, versions
from ._postgres import PostgresRunStore
from ._replay import comparable, differences, replay
from ._sqlite import SQLiteRunStore
from ._store import RunStore, RunStoreError, StoredRun, is_store_url, open_run_store

__all__ = ["ManifestClock", "PostgresRunStore", "RunStore", "RunStoreError", "SQLiteRunStore",
           "StoredRun", "comparable", "differences", "is_store_url", "open_run_store",
           "replay", "versions"]
