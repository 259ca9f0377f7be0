"""Opening a run store: the implementation a location names (a path, or a postgresql://
URL), kept apart from the interface so that `RunStore` knows none of its implementations."""

from __future__ import annotations

from pathlib import Path

from ..settings import Settings
from ._store import RunStore, RunStoreError

__all__ = ["is_store_url", "open_run_store"]

_URL_SCHEMES = ("postgresql://", "postgres://")


def is_store_url(location: str | Path) -> bool:
    """Whether `location` names a PostgreSQL store (a postgresql:// URL), not a file."""
    return isinstance(location, str) and location.startswith(_URL_SCHEMES)


def open_run_store(where: Settings | str | Path, *, create: bool = True) -> RunStore:
    """The run store at a path or postgresql:// URL, or the one `Settings` name
    (`store_url` when set, else `store_path`).

    With `create=False` (readers such as `scillm runs`), a store that does not exist yet
    is a RunStoreError instead of being created.
    """
    if isinstance(where, Settings):
        where = where.store_url or where.store_path
    if is_store_url(where):
        from ._postgres import PostgresRunStore

        return PostgresRunStore(str(where), create=create)
    if "://" in str(where):
        raise RunStoreError(f"unsupported run store URL {str(where).split('://')[0]}://…; "
                            "use a file path or postgresql://user:pass@host:port/db")
    from ._sqlite import SQLiteRunStore

    return SQLiteRunStore(where, create=create)
