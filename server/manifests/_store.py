"""The run store: every run's manifest, request and result, replayable by id.

One table, `runs`; the request and the terminal result are stored as serialized protos
with their full type names, so a run can be re-executed exactly as it was asked, and the
stream's other events (per-item verdicts with every formalization attempt, per-run
outputs, model turns and tool I/O) as JSON for audit.

Two implementations share this interface and its semantics (filters, newest first, a
unique ASCII-case-insensitive prefix for `get`):

    RunStore                  the interface, and `RunStore(location)` opens either
    ├── SQLiteRunStore        a file path (the default), or ':memory:'
    └── PostgresRunStore      a postgresql:// URL (the `postgres` extra: psycopg 3)

    RunStoreError             the store cannot be opened (missing, unreachable, no driver)

Writes go through a worker thread so the event loop never waits on the database.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

# The request and result types of every service, registered for _decode.
from scillm.agent.v1 import agent_pb2  # noqa: F401
from scillm.codeworld.v1 import codeworld_pb2  # noqa: F401
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2  # noqa: F401
from scillm.prove.v1 import prove_pb2  # noqa: F401

from ..settings import Settings

__all__ = ["RunStore", "RunStoreError", "StoredRun", "is_store_url", "open_run_store"]

#: Columns of `runs`, in the order of a stored row.
COLUMNS: tuple[str, ...] = (
    "run_id", "service", "session_id", "track", "model", "request_id", "start_time",
    "manifest", "request_type", "request", "result_type", "result", "events")

_URL_SCHEMES = ("postgresql://", "postgres://")


class RunStoreError(Exception):
    """The run store cannot be opened: no such store, server unreachable, driver missing."""


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


def _decode(type_name: str, blob: bytes) -> Message:
    cls = symbol_database.Default().GetSymbol(type_name)
    message: Message = cls()
    message.ParseFromString(blob)
    return message


def _like_prefix(prefix: str) -> str:
    r"""A LIKE pattern matching strings that start with `prefix` (escape character `\`)."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


@dataclass(frozen=True)
class StoredRun:
    """One stored run."""

    manifest: common_pb2.RunManifest
    request: Message
    result: Message
    #: The stream's other events (per-item results, runs, tool calls), as JSON objects.
    events: tuple[dict[str, Any], ...] = ()


class RunStore:
    """Where runs are kept. `RunStore(location)` opens a `SQLiteRunStore` for a path and a
    `PostgresRunStore` for a postgresql:// URL, as `open_run_store` does.

    An implementation runs one statement at a time on its connection (`_run`) and names
    its parameter placeholder and its ASCII-case-insensitive LIKE; the SQL is shared.
    """

    #: Where the store is, safe to print (a URL's password is masked).
    location: str
    #: The driver's parameter placeholder.
    _PARAM: ClassVar[str] = "?"
    #: The operator that matches a LIKE pattern ignoring ASCII case.
    _ILIKE: ClassVar[str] = "LIKE"
    #: The statement that stores a row, replacing a run with the same id.
    _UPSERT: ClassVar[str] = ""

    def __new__(cls, location: str | Path = ":memory:", **_options: Any) -> RunStore:
        kind: type[RunStore] = cls
        if cls is RunStore:
            from ._postgres import PostgresRunStore
            from ._sqlite import SQLiteRunStore

            kind = PostgresRunStore if is_store_url(location) else SQLiteRunStore
        return super().__new__(kind)

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        """Execute one statement (committed at once); its rows, if it returns any."""
        raise NotImplementedError

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement of the caller's on the store's connection (for other tables in the
        same database, such as the keys'), committed at once; its rows, if any. Blocking."""
        return self._run(sql, args)

    def close(self) -> None:
        """Close the connection."""
        raise NotImplementedError

    def put_sync(self, manifest: common_pb2.RunManifest, request: Message, result: Message,
                 events: Sequence[Message] = ()) -> None:
        """Store a run (replaces a run with the same id)."""
        recorded = json.dumps([json_format.MessageToDict(e, preserving_proto_field_name=True)
                               for e in events])
        row = (manifest.run_id, manifest.service, manifest.session_id, manifest.track,
               manifest.model, manifest.request_id, manifest.start_time.ToJsonString(),
               manifest.SerializeToString(), request.DESCRIPTOR.full_name,
               request.SerializeToString(), result.DESCRIPTOR.full_name,
               result.SerializeToString(), recorded)
        self._run(self._UPSERT, row)

    async def put(self, manifest: common_pb2.RunManifest, request: Message, result: Message,
                  events: Sequence[Message] = ()) -> None:
        """`put_sync` on a worker thread."""
        await asyncio.to_thread(self.put_sync, manifest, request, result, events)

    def list(self, *, session_id: str | None = None, track: str | None = None,
             service: str | None = None, limit: int = 50) -> list[common_pb2.RunManifest]:
        """Manifests, newest first, filtered by session, track and service (a negative
        limit: all of them)."""
        where: list[str] = []
        args: list[object] = []
        for column, value in (("session_id", session_id), ("track", track),
                              ("service", service)):
            if value:
                where.append(f"{column} = {self._PARAM}")
                args.append(value)
        sql = "SELECT manifest FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time DESC"
        if limit >= 0:
            sql += f" LIMIT {self._PARAM}"
            args.append(limit)
        return [common_pb2.RunManifest.FromString(r[0]) for r in self._run(sql, args)]

    def get(self, run_id: str) -> StoredRun | None:
        """The run with this id (a unique prefix works too, in any ASCII case), or None."""
        p = self._PARAM
        rows = self._run(
            "SELECT manifest, request_type, request, result_type, result, events FROM runs "
            f"WHERE run_id = {p} OR run_id {self._ILIKE} {p} ESCAPE '\\' LIMIT 2",
            (run_id, _like_prefix(run_id)))
        if len(rows) != 1:
            return None
        manifest, request_type, request, result_type, result, events = rows[0]
        return StoredRun(common_pb2.RunManifest.FromString(bytes(manifest)),
                         _decode(request_type, bytes(request)),
                         _decode(result_type, bytes(result)), tuple(json.loads(events)))
