"""The run store: every run's manifest, request and result, in SQLite, replayable by id.

One table, `runs`; the request and the terminal result are stored as serialized protos
with their full type names, so a run can be re-executed exactly as it was asked, and the
stream's other events (per-item verdicts with every formalization attempt, per-run
outputs, model turns and tool I/O) as JSON for audit.
Writes go through a worker thread so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, symbol_database
from google.protobuf.message import Message

# The request and result types of every service, registered for _decode.
from scillm.agent.v1 import agent_pb2  # noqa: F401
from scillm.codeworld.v1 import codeworld_pb2  # noqa: F401
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2  # noqa: F401
from scillm.prove.v1 import prove_pb2  # noqa: F401

__all__ = ["RunStore", "StoredRun"]

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


def _decode(type_name: str, blob: bytes) -> Message:
    cls = symbol_database.Default().GetSymbol(type_name)
    message: Message = cls()
    message.ParseFromString(blob)
    return message


@dataclass(frozen=True)
class StoredRun:
    """One stored run."""

    manifest: common_pb2.RunManifest
    request: Message
    result: Message
    #: The stream's other events (per-item results, runs, tool calls), as JSON objects.
    events: tuple[dict[str, Any], ...] = ()


class RunStore:
    """SQLite-backed run store (path ':memory:' keeps it in memory)."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

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
        with self._lock, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)

    async def put(self, manifest: common_pb2.RunManifest, request: Message, result: Message,
                  events: Sequence[Message] = ()) -> None:
        """`put_sync` on a worker thread."""
        await asyncio.to_thread(self.put_sync, manifest, request, result, events)

    def list(self, *, session_id: str | None = None, track: str | None = None,
             service: str | None = None, limit: int = 50) -> list[common_pb2.RunManifest]:
        """Manifests, newest first, filtered by session, track and service."""
        where, args = [], []
        for column, value in (("session_id", session_id), ("track", track),
                              ("service", service)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        sql = "SELECT manifest FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY start_time DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, [*args, limit]).fetchall()
        return [common_pb2.RunManifest.FromString(r[0]) for r in rows]

    def get(self, run_id: str) -> StoredRun | None:
        """The run with this id (a unique prefix works too), or None."""
        with self._lock:
            rows = self._db.execute(
                "SELECT manifest, request_type, request, result_type, result, events FROM runs "
                "WHERE run_id = ? OR run_id LIKE ? LIMIT 2", (run_id, run_id + "%")).fetchall()
        if len(rows) != 1:
            return None
        manifest, request_type, request, result_type, result, events = rows[0]
        return StoredRun(common_pb2.RunManifest.FromString(manifest),
                         _decode(request_type, request), _decode(result_type, result),
                         tuple(json.loads(events)))

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
