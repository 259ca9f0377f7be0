"""Run manifests: the record every run leaves (run_id, request_id, items, session, track),
kept while it runs (`recording`), the run store (SQLite by default, PostgreSQL by URL),
its retention, and replay."""

from ._made import StreamSoFar
from ._manifest import (
    ManifestClock,
    RunRecord,
    claim_run,
    current_trace_id,
    failure,
    recording,
    start_record,
    versions,
)
from ._open import is_store_url, open_run_store
from ._postgres import PostgresRunStore
from ._replay import comparable, differences, replay
from ._retention import Pruned, RunSweeper, agent_trace_dir, prune
from ._sqlite import SQLiteRunStore, cannot_write
from ._store import (
    BadPageToken,
    ListedRun,
    RunPage,
    RunQuery,
    RunStore,
    RunStoreError,
    RunStoreUnavailable,
    StoredRun,
    run_state,
    state_of,
)

__all__ = ["BadPageToken", "ListedRun", "ManifestClock", "PostgresRunStore", "Pruned",
           "RunPage", "RunQuery", "RunRecord", "RunStore", "RunStoreError",
           "RunStoreUnavailable", "RunSweeper", "SQLiteRunStore", "StoredRun", "StreamSoFar",
           "agent_trace_dir", "cannot_write", "claim_run", "comparable", "current_trace_id",
           "differences", "failure", "is_store_url", "open_run_store", "prune", "recording",
           "replay", "run_state", "start_record", "state_of", "versions"]
