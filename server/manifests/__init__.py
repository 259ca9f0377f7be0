"""Run manifests: the record every run leaves (run_id, request_id, items, session, track),
the SQLite run store, and replay."""

from ._manifest import ManifestClock, versions
from ._replay import comparable, differences, replay
from ._store import RunStore, StoredRun

__all__ = ["ManifestClock", "RunStore", "StoredRun", "comparable", "differences", "replay",
           "versions"]
