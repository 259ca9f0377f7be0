"""The run store: every run's manifest, request and result, replayable by id.

One table, `runs`; the request and the terminal result are stored as serialized protos
with their full type names, so a run can be re-executed exactly as it was asked, and the
stream's other events (per-item verdicts with every formalization attempt, per-run
outputs, model turns and tool I/O) as JSON for audit.

This module is the interface and its shared SQL; the implementations live beside it and
`open_run_store` (in `_open`) picks one for a location:

    RunStore                  the interface (filters, newest first, pages, a unique
    │                         ASCII-case-insensitive prefix for `get`)
    ├── SQLiteRunStore        a file path (the default), or ':memory:'
    └── PostgresRunStore      a postgresql:// URL (the `postgres` extra: psycopg 3)

    RunStoreError             the store cannot be opened (missing, unreachable, no driver)
    └── RunStoreUnavailable   its server went away after it was opened: UNAVAILABLE
    BadPageToken              a page token this store did not hand out

Writes go through a worker thread so the event loop never waits on the database.

A run is stored twice: when it starts (`started`: its manifest and request, and an empty
result, `google.protobuf.Empty`), so it is listed while it streams, and when it ends
(`put`: the terminal result replaces the row). A run that ends without its result (an
error, a caller who hung up) keeps the empty result with its end time stamped; a stored
completion that failed keeps the error its caller was sent (`google.rpc.Status`):
`run_state` tells "running", "interrupted", "failed" and "done" apart.

Retention (`_retention`) removes runs by their last activity, `active_time`: a run's end
time once it has ended, else its start time, moved forward while it runs by the process
running it (`touch_live`), so that a run still streaming is never taken for an old one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from google.protobuf import empty_pb2, json_format, symbol_database
from google.protobuf.message import Message
from google.rpc import status_pb2

# The request and result types of every service, registered for _decode.
from scillm.agent.v1 import agent_pb2  # noqa: F401
from scillm.codeworld.v1 import codeworld_pb2  # noqa: F401
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2  # noqa: F401
from scillm.prove.v1 import prove_pb2  # noqa: F401

from ..errors import Unavailable

__all__ = ["BadPageToken", "ListedRun", "RunPage", "RunQuery", "RunStore", "RunStoreError",
           "RunStoreUnavailable", "StoredRun", "instant", "run_state", "state_of"]


#: The result types of a run without its result (`state_of`): the error its caller was
#: sent, or nothing (running, or interrupted once it has an end time).
_FAILED = status_pb2.Status.DESCRIPTOR.full_name
_NO_RESULT = empty_pb2.Empty.DESCRIPTOR.full_name


def run_state(manifest: common_pb2.RunManifest, result: Message) -> str:
    """"running" (started, no result yet), "interrupted" (ended without a result: its
    caller left, or an error ended a run its service keeps no errors of), "failed" (ended
    by an error or the server's deadline, kept as the `google.rpc.Status` its caller was
    sent: a stored completion's) or "done"."""
    return state_of(manifest, result.DESCRIPTOR.full_name)


def state_of(manifest: common_pb2.RunManifest, result_type: str) -> str:
    """`run_state` from the full name of the result's type (all a listing needs)."""
    if result_type == _FAILED:
        return "failed"
    if result_type != _NO_RESULT:
        return "done"
    return "interrupted" if manifest.HasField("end_time") else "running"

#: Columns of `runs`, in the order of a stored row. `active_time` came last (a store made
#: before has it added when opened: `RunStore._upgrade`; its rows hold '' there, and their
#: start time stands for it).
COLUMNS: tuple[str, ...] = (
    "run_id", "service", "session_id", "track", "model", "request_id", "start_time",
    "manifest", "request_type", "request", "result_type", "result", "events", "active_time")

#: The index retention finds inactive runs by (its rows of '' by their start time).
ACTIVE_INDEX = "CREATE INDEX IF NOT EXISTS runs_active ON runs (active_time, start_time)"
#: Run ids per statement when the store's live runs are touched.
_TOUCH_CHUNK = 500


#: How `active_time` writes a moment: UTC to the microsecond, always as wide, so that the
#: text's order is the moments' order.
_INSTANT = "%Y-%m-%dT%H:%M:%S.%fZ"


def instant(seconds: float) -> str:
    """A moment (seconds since the epoch) as `active_time` holds it; one before the epoch,
    as the epoch (no run is older)."""
    return datetime.fromtimestamp(max(seconds, 0.0), UTC).strftime(_INSTANT)


def _active_time(manifest: common_pb2.RunManifest) -> str:
    """A run's last activity as its manifest tells it: its end, else its start."""
    moment = manifest.end_time if manifest.HasField("end_time") else manifest.start_time
    at = datetime.fromtimestamp(moment.seconds, UTC) + timedelta(microseconds=moment.nanos // 1000)
    return at.strftime(_INSTANT)

#: Columns a query may filter on (exact match), in the order of `RunQuery`'s fields.
FILTERS: tuple[str, ...] = ("service", "session_id", "track", "model")


class RunStoreError(Exception):
    """The run store cannot be opened: no such store, server unreachable, driver missing."""


class RunStoreUnavailable(RunStoreError, Unavailable):
    """The run store was open but its server cannot be reached now (stopped, restarting,
    refusing connections): the call fails with UNAVAILABLE and the reason, and may be
    retried; the store reconnects on its next use."""


class BadPageToken(Exception):
    """A page token that this store did not hand out (garbled or cut)."""


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


@dataclass(frozen=True)
class RunQuery:
    """Which runs to list: exact filters (empty matches any), newest first, in pages."""

    service: str = ""
    session_id: str = ""
    track: str = ""
    model: str = ""
    #: Runs per page (at least 1).
    limit: int = 50
    #: Where the page starts: "" for the newest run, else a `RunPage.next_page_token`.
    page_token: str = ""

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("RunQuery.limit must be at least 1")


@dataclass(frozen=True)
class ListedRun:
    """A run as listed: its manifest and its terminal result."""

    manifest: common_pb2.RunManifest
    result: Message


@dataclass(frozen=True)
class RunPage:
    """One page of runs, newest first."""

    runs: tuple[ListedRun, ...]
    #: The token of the next (older) page; empty on the last page.
    next_page_token: str = ""


def _page_token(start_time: str, run_id: str) -> str:
    raw = json.dumps([start_time, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _parse_page_token(token: str) -> tuple[str, str]:
    try:
        value = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # a forged token nested deep
        value = None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise BadPageToken(f"not a page token of this run store: {token[:40]!r}")
    return value[0], value[1]


class RunStore(ABC):
    """Where runs are kept (`open_run_store` opens one for a path or URL).

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
    #: What a retention batch's SELECT ends with to lock its rows (skipping those locked).
    _LOCK_ROWS: ClassVar[str] = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Whether `active_time` and its index are known to be there (`_upgrade`).
        self._upgraded = False
        #: Runs this process has started and not yet stored the end of, by id: when each
        #: was last said to be active (seconds since the epoch).
        self._live: dict[str, float] = {}

    @abstractmethod
    def _run(self, sql: str, args: Sequence[object]) -> list[tuple[Any, ...]]:
        """Execute one statement (committed at once); its rows, if it returns any."""

    def execute(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        """One statement of the caller's on the store's connection (for other tables in the
        same database, such as the keys'), committed at once; its rows, if any. Blocking."""
        return self._run(sql, args)

    @abstractmethod
    def close(self) -> None:
        """Close the connection."""

    @abstractmethod
    def _has_active_time(self) -> bool:
        """Whether `runs` has the `active_time` column (a store made before has not)."""

    @abstractmethod
    def _upgrade(self) -> None:
        """Add `active_time` and its index to a store made before them (idempotent, and
        safe when several processes open the store at once)."""

    def _ensure_upgraded(self) -> None:
        if not self._upgraded:
            self._upgrade()
            self._upgraded = True

    def put_sync(self, manifest: common_pb2.RunManifest, request: Message, result: Message,
                 events: Sequence[Message] = ()) -> None:
        """Store a run (replaces a run with the same id). A run stored again after a
        retention sweep took its row (see `touch_live`) is stored whole again."""
        try:
            self._ensure_upgraded()
            self._run(self._UPSERT, self._row(manifest, request, result, events))
        finally:
            self._live.pop(manifest.run_id, None)

    @staticmethod
    def _row(manifest: common_pb2.RunManifest, request: Message, result: Message,
             events: Sequence[Message]) -> tuple[object, ...]:
        """A run as the values of `COLUMNS`."""
        recorded = json.dumps([json_format.MessageToDict(e, preserving_proto_field_name=True)
                               for e in events])
        return (manifest.run_id, manifest.service, manifest.session_id, manifest.track,
                manifest.model, manifest.request_id, manifest.start_time.ToJsonString(),
                manifest.SerializeToString(), request.DESCRIPTOR.full_name,
                request.SerializeToString(), result.DESCRIPTOR.full_name,
                result.SerializeToString(), recorded, _active_time(manifest))

    async def put(self, manifest: common_pb2.RunManifest, request: Message, result: Message,
                  events: Sequence[Message] = ()) -> None:
        """`put_sync` on a worker thread."""
        await asyncio.to_thread(self.put_sync, manifest, request, result, events)

    async def claim(self, manifest: common_pb2.RunManifest, request: Message) -> bool:
        """List a run that has started under an id its caller chose, unless that id is
        already the start (in any ASCII case) of a stored run's id, that run's own
        included: whether it was listed. One statement, so two runs started at once with
        one id cannot both take it (a check, then a write, let the second replace the
        first).

        Why a prefix is refused too: `get` takes an exact id before a prefix, so a caller
        who named their run after the first characters of another key's run (the 8 that
        `scillm runs list` users type) took over every lookup by those characters: the UI
        and `scillm runs show` gave the caller's run for the other one. Refusing such an id
        here keeps `get` simple and every exact id reachable (reporting an exact id that is
        also a prefix as ambiguous would have made runs `a` beside `af6c...`, or `exp-1`
        beside `exp-10`, unreachable again, and let anyone hide a run by naming theirs
        after its id plus a letter). What is left: an id chosen before a run whose id
        extends it stays the exact match for those characters (`exp-1`, then `exp-10`);
        a generated id (128 random bits) extends a given chosen one by chance alone, about
        once in 2**32 for 8 characters.

        Claims made at the same moment take turns, so each sees the ones before it (two
        claims of `Exp-1` and `exp-1`, each beginning the other, were both listed): in
        SQLite the statement takes the write lock before it reads; PostgreSQL's, which
        reads what was committed when it started, runs in a transaction behind a lock that
        only claims take (`PostgresRunStore._claim`)."""
        p = self._PARAM
        sql = (f"INSERT INTO runs ({', '.join(COLUMNS)}) SELECT {', '.join([p] * len(COLUMNS))}"
               f" WHERE NOT EXISTS (SELECT 1 FROM runs WHERE run_id {self._ILIKE} {p}"
               " ESCAPE '\\') ON CONFLICT (run_id) DO NOTHING RETURNING run_id")
        row = (*self._row(manifest, request, empty_pb2.Empty(), ()),
               _like_prefix(manifest.run_id))
        claimed = bool(await asyncio.to_thread(self._claim, sql, row))
        if claimed:
            self._live[manifest.run_id] = float(manifest.start_time.seconds)
        return claimed

    def _claim(self, sql: str, row: Sequence[object]) -> list[tuple[Any, ...]]:
        """Run a claim's statement (blocking): the rows it inserted."""
        self._ensure_upgraded()
        return self._run(sql, row)

    async def started(self, manifest: common_pb2.RunManifest, request: Message) -> None:
        """List a run that has started and has no result yet (see the module docstring)."""
        await asyncio.to_thread(self.put_sync, manifest, request, empty_pb2.Empty())
        self._live[manifest.run_id] = float(manifest.start_time.seconds)

    def touch_live(self, now: float, stale_after_s: float) -> int:
        """Say that the runs this process is running are active at `now` (seconds since
        the epoch): those it last said so of more than `stale_after_s` before. Retention
        then never takes a run that streams for longer than it keeps runs. Blocking; the
        number of runs touched."""
        stale = [run_id for run_id, said in self._live.copy().items()
                 if said < now - stale_after_s]
        if not stale:
            return 0
        self._ensure_upgraded()
        for start in range(0, len(stale), _TOUCH_CHUNK):
            chunk = stale[start:start + _TOUCH_CHUNK]
            marks = ", ".join([self._PARAM] * len(chunk))
            self._run(f"UPDATE runs SET active_time = {self._PARAM} WHERE run_id IN ({marks})",
                      (instant(now), *chunk))
        for run_id in stale:
            if run_id in self._live:  # not ended meanwhile
                self._live[run_id] = now
        return len(stale)

    def _inactive(self) -> str:
        """The condition of a run inactive since before a moment (given twice)."""
        p = self._PARAM
        return (f"((active_time > '' AND active_time < {p}) "
                f"OR (active_time = '' AND start_time < {p}))")

    def count_inactive(self, before: str) -> int:
        """How many runs have been inactive since before `before` (an `instant`). Changes
        nothing: in a store made before `active_time`, its runs by their start time."""
        if self._upgraded or self._has_active_time():
            rows = self._run(f"SELECT count(*) FROM runs WHERE {self._inactive()}",
                             (before, before))
        else:
            rows = self._run(f"SELECT count(*) FROM runs WHERE start_time < {self._PARAM}",
                             (before,))
        return int(rows[0][0])

    def delete_inactive(self, before: str, limit: int) -> int:
        """Delete at most `limit` runs inactive since before `before` (an `instant`), in
        one short statement; how many it deleted. Several processes may call it at once:
        a run one of them deleted is not there for the others to delete (nor to fail on),
        and a run stored again meanwhile is active, and kept."""
        self._ensure_upgraded()
        p = self._PARAM
        sql = (f"DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs WHERE "
               f"{self._inactive()} LIMIT {p}{self._LOCK_ROWS}) RETURNING run_id")
        return len(self._run(sql, (before, before, limit)))

    def list(self, *, session_id: str | None = None, track: str | None = None,
             service: str | None = None, limit: int = 50) -> list[common_pb2.RunManifest]:
        """Manifests, newest first, filtered by session, track and service (a negative
        limit: all of them)."""
        rows = self._listed("manifest", session_id, track, service, limit)
        return [common_pb2.RunManifest.FromString(bytes(r[0])) for r in rows]

    def states(self, *, session_id: str | None = None, track: str | None = None,
               service: str | None = None, limit: int = 50,
               ) -> builtins.list[tuple[common_pb2.RunManifest, str]]:
        """`list`, each manifest with its run's state (`run_state`: read off the type of
        its result, not the result)."""
        rows = self._listed("manifest, result_type", session_id, track, service, limit)
        listed = []
        for manifest, result_type in rows:
            m = common_pb2.RunManifest.FromString(bytes(manifest))
            listed.append((m, state_of(m, str(result_type))))
        return listed

    def _listed(self, columns: str, session_id: str | None, track: str | None,
                service: str | None, limit: int) -> builtins.list[tuple[Any, ...]]:
        query = RunQuery(service=service or "", session_id=session_id or "",
                         track=track or "")
        sql, args = self._select(columns, query)
        if limit >= 0:
            sql += f" LIMIT {self._PARAM}"
            args.append(limit)
        return self._run(sql, args)

    def page(self, query: RunQuery) -> RunPage:
        """One page of runs matching `query`, newest first, with their results (not their
        requests or events), and the token of the next page. Raises BadPageToken."""
        sql, args = self._select("manifest, result_type, result, start_time, run_id", query)
        sql += f" LIMIT {self._PARAM}"
        args.append(query.limit + 1)
        rows = self._run(sql, args)
        runs = tuple(ListedRun(common_pb2.RunManifest.FromString(bytes(manifest)),
                               _decode(result_type, bytes(result)))
                     for manifest, result_type, result, _, _ in rows[:query.limit])
        more = len(rows) > query.limit
        last = rows[query.limit - 1] if more else None
        return RunPage(runs, _page_token(last[3], last[4]) if last is not None else "")

    def distinct(self, column: str, limit: int = 200) -> builtins.list[str]:
        """The non-empty values of one filter column (`FILTERS`), sorted, at most `limit`."""
        if column not in FILTERS:
            raise ValueError(f"not a filter column: {column!r}")
        rows = self._run(f"SELECT DISTINCT {column} FROM runs WHERE {column} <> '' "
                         f"ORDER BY {column} LIMIT {self._PARAM}", (limit,))
        return [str(r[0]) for r in rows]

    def _select(self, columns: str, query: RunQuery) -> tuple[str, builtins.list[object]]:
        """`SELECT columns FROM runs WHERE <query> ORDER BY <newest first>`, and its
        arguments; ties on start_time are broken by run_id so pages never overlap."""
        p = self._PARAM
        where: builtins.list[str] = []
        args: builtins.list[object] = []
        for column in FILTERS:
            value = getattr(query, column)
            if value:
                where.append(f"{column} = {p}")
                args.append(value)
        if query.page_token:
            start_time, run_id = _parse_page_token(query.page_token)
            where.append(f"(start_time < {p} OR (start_time = {p} AND run_id < {p}))")
            args += [start_time, start_time, run_id]
        sql = f"SELECT {columns} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return sql + " ORDER BY start_time DESC, run_id DESC", args

    def exists(self, run_id: str) -> bool:
        """Whether a run has exactly this id."""
        return bool(self._run(f"SELECT 1 FROM runs WHERE run_id = {self._PARAM}", (run_id,)))

    def get(self, run_id: str) -> StoredRun | None:
        """The run with this id, else the one it is a unique prefix of (in any ASCII
        case), or None. The exact id comes first: a run named `a` beside a run `af6c...`
        was unreachable as ambiguous. So that an exact id cannot take over the lookups by
        a prefix of another run's id, `claim` refuses a caller's id that begins a stored
        one (generated ids are all 32 hex digits: none begins another)."""
        p = self._PARAM
        columns = "SELECT manifest, request_type, request, result_type, result, events FROM runs"
        rows = self._run(f"{columns} WHERE run_id = {p}", (run_id,))
        if not rows:
            rows = self._run(f"{columns} WHERE run_id {self._ILIKE} {p} ESCAPE '\\' LIMIT 2",
                             (_like_prefix(run_id),))
        if len(rows) != 1:
            return None
        manifest, request_type, request, result_type, result, events = rows[0]
        return StoredRun(common_pb2.RunManifest.FromString(bytes(manifest)),
                         _decode(request_type, bytes(request)),
                         _decode(result_type, bytes(result)), tuple(json.loads(events)))
