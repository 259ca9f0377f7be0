"""Run manifests: the record every run leaves (run_id, request_id, items, session, track)."""

from ._manifest import ManifestClock, versions

__all__ = ["ManifestClock", "versions"]
