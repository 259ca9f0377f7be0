"""Sessions: each run's mean aggregate per (session, track), and a plateau signal.

Kept in memory and SQLite (SessionStore), or in Redis (RedisSessionStore) when the
service runs as several replicas.

A session is its owner's: `owner` is the id of the virtual key that records it, and
another key naming the same (session, track) has a history of its own. Before, sessions
were keyed by (session, track) alone, so with keys on a caller naming another's session
read its run count and means and moved its plateau signal with runs of its own. The
unscoped sessions (owner ""; every caller's with keys off, the master key's with keys on)
are stored exactly as they always were, so a store written before keeps its history.

Retention (``retention_days``, the serving process's ``SCILLM_RUN_RETENTION_DAYS``; 0 keeps
history for ever) bounds what is kept. In SQLite the runs recorded (``created``) longer ago
are deleted by ``sweep``, which ``_retention.SessionSweeper`` calls when the engine starts
and hourly: 500 rows a statement on a worker thread, between which runs are recorded. In
Redis a list expires that long after its last run (EXPIRE with every write), so Redis
bounds itself; ``sweep`` gives that expiry to the lists written before (with none) or
under a longer retention.

A session's runs within the retention are never deleted, so a session still in use keeps
its run count: its next index is one past its newest run, which is kept, so no index
is taken twice. Its plateau signal reads the runs kept: a run older than
the retention no longer counts in the window, so a track whose last ``window`` runs
reach further back reports no plateau until it has that many again. A session with no
run within the retention is forgotten: its next run is its first (index 0), as a new
session's, just as the run store forgets the manifests of its runs by the same rule. In
Redis a list goes as a whole: a session with a run at least every ``retention_days``
keeps all of its runs.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

from ._events import SessionInfo
from .errors import SessionStoreError

#: The unscoped sessions' runs, as they always were; and the runs of the sessions a
#: virtual key owns. A table of their own rather than an owner column in the first: that
#: table's primary key cannot take a column without rebuilding it, and a file written
#: before needs no migration (nor does an older server reading it lose anything).
_SCHEMA = ("""CREATE TABLE IF NOT EXISTS codeworld_runs (
    session_id TEXT NOT NULL, track TEXT NOT NULL, idx INTEGER NOT NULL,
    mean_aggregate REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (session_id, track, idx))""",
           """CREATE TABLE IF NOT EXISTS codeworld_owned_runs (
    owner TEXT NOT NULL, session_id TEXT NOT NULL, track TEXT NOT NULL, idx INTEGER NOT NULL,
    mean_aggregate REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (owner, session_id, track, idx))""",
           # What retention reads: the runs recorded before a time, oldest first.
           "CREATE INDEX IF NOT EXISTS codeworld_runs_created ON codeworld_runs (created)",
           "CREATE INDEX IF NOT EXISTS codeworld_owned_runs_created "
           "ON codeworld_owned_runs (created)")
#: The tables retention sweeps.
SESSION_TABLES = ("codeworld_runs", "codeworld_owned_runs")
#: Seconds in a day.
DAY_S = 86_400.0
#: The prefix of every Redis list of session history (`session_key`).
_REDIS_PREFIX = "scillm:codeworld:"


class _Queries(NamedTuple):
    """A track's statements; each takes the track's key columns first."""

    last: str  # the track's last index
    recent: str  # its last means, newest first (then the LIMIT)
    insert: str  # a run (then its index, mean and time)


_UNSCOPED = _Queries(
    "SELECT MAX(idx) FROM codeworld_runs WHERE session_id=? AND track=?",
    "SELECT mean_aggregate FROM codeworld_runs WHERE session_id=? AND track=? "
    "ORDER BY idx DESC LIMIT ?",
    "INSERT INTO codeworld_runs VALUES (?, ?, ?, ?, ?)")
_OWNED = _Queries(
    "SELECT MAX(idx) FROM codeworld_owned_runs WHERE owner=? AND session_id=? AND track=?",
    "SELECT mean_aggregate FROM codeworld_owned_runs WHERE owner=? AND session_id=? "
    "AND track=? ORDER BY idx DESC LIMIT ?",
    "INSERT INTO codeworld_owned_runs VALUES (?, ?, ?, ?, ?, ?)")


class SessionStore:
    """Keeps run means in SQLite (``path``; ``":memory:"`` keeps them in memory only).

    ``record`` reports a plateau when at least ``window`` earlier runs exist and the gain
    of this run over the mean of the previous ``window`` is below ``threshold``. Each
    record reads only the track's run count and its last ``window`` means (the primary
    key's index), and nothing is held in Python per session: before, every (session,
    track) ever seen kept all its means in a dict, so a caller naming a new session per
    run grew the server without end. ``sweep`` deletes the runs recorded more than
    ``retention_days`` ago (see the module docstring).
    """

    def __init__(self, path: str = ":memory:", *, window: int = 5,
                 threshold: float = 0.01, retention_days: float = 0) -> None:
        self._path = path
        self._window = window
        self._threshold = threshold
        self.retention_days = retention_days
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def location(self) -> str:
        """Where the history is kept (for logs)."""
        return self._path

    def open(self) -> None:
        """Open the database and create its tables."""
        try:
            self._db = sqlite3.connect(self._path, check_same_thread=False)
            for table in _SCHEMA:
                self._db.execute(table)
            self._db.commit()
        except sqlite3.Error as exc:
            raise SessionStoreError(f"cannot open {self._path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()
            self._db = None

    async def record(self, session_id: str, track: str, mean_aggregate: float, *,
                     owner: str = "") -> SessionInfo:
        """Append a run's mean to `owner`'s (session, track) and say whether the track
        has plateaued."""
        async with self._lock:
            return await asyncio.to_thread(self._record, session_id, track, mean_aggregate,
                                           owner)

    def _record(self, session_id: str, track: str, value: float, owner: str) -> SessionInfo:
        db = self._db
        if db is None:
            raise SessionStoreError("the session store is not open")
        queries, key = ((_OWNED, (owner, session_id, track)) if owner
                        else (_UNSCOPED, (session_id, track)))
        try:
            (last,) = db.execute(queries.last, key).fetchone()
            count = 0 if last is None else int(last) + 1
            recent = [float(r[0]) for r in db.execute(
                queries.recent, (*key, self._window)).fetchall()][::-1]
            db.execute(queries.insert, (*key, count, value, time.time()))
            db.commit()
        except sqlite3.Error as exc:
            raise SessionStoreError(str(exc)) from exc
        return plateau_info(session_id, track, recent, count, value, self._window,
                            self._threshold)

    async def sweep(self, now: float, batch: int) -> AsyncGenerator[int, None]:
        """Delete the runs recorded more than ``retention_days`` before ``now`` (seconds
        since the epoch), at most ``batch`` a statement, each on a worker thread and under
        the lock ``record`` takes (so a record waits one statement at most); yields how
        many each statement deleted, the caller pausing between them. Nothing with a
        retention of 0."""
        if self.retention_days <= 0:
            return
        before = now - self.retention_days * DAY_S
        for table in SESSION_TABLES:
            while True:
                async with self._lock:
                    deleted = await asyncio.to_thread(self._delete_before, table, before,
                                                      batch)
                yield deleted
                if deleted < batch:
                    break

    def _delete_before(self, table: str, before: float, batch: int) -> int:
        db = self._db
        if db is None:
            raise SessionStoreError("the session store is not open")
        try:
            return delete_before(db, table, before, batch)
        except sqlite3.Error as exc:
            raise SessionStoreError(str(exc)) from exc


def delete_before(db: sqlite3.Connection, table: str, before: float, batch: int) -> int:
    """Delete at most ``batch`` rows of ``table`` recorded before ``before`` and commit;
    how many. Blocking. The rows are found through the ``created`` index, or, in a file no
    server of this version opened yet (`scillm runs prune`), in the order they were written:
    the oldest first either way, so no statement reads the whole table but the last."""
    cursor = db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                        "WHERE created < ? LIMIT ?)", (before, batch))
    db.commit()
    return max(cursor.rowcount, 0)


def count_before(db: sqlite3.Connection, table: str, before: float) -> int:
    """How many rows of ``table`` were recorded before ``before``. Blocking."""
    (count,) = db.execute(f"SELECT COUNT(*) FROM {table} WHERE created < ?",
                          (before,)).fetchone()
    return int(count)


def plateau_info(session_id: str, track: str, recent: list[float], count: int, value: float,
                 window: int, threshold: float) -> SessionInfo:
    """This run's place in its track (`count` runs before it, `recent` the last of their
    means): the gain over the mean of the previous `window`."""
    recent = recent[-window:]
    previous_mean = sum(recent) / len(recent) if recent else None
    gain = None if previous_mean is None else value - previous_mean
    plateau = gain is not None and len(recent) >= window and gain < threshold
    return SessionInfo(session_id, track, count, value, previous_mean, gain, plateau)


def session_key(session_id: str, track: str, owner: str = "") -> str:
    """The Redis list of a (session, track): `scillm:codeworld:<session>:<track>`, as it
    always was when neither holds a colon; otherwise the pair as JSON after `json:`, so
    ("a:b", "c") and ("a", "b:c") keep two histories (that JSON holds a colon, which a
    plain name's two parts cannot both lack, so no plain name is ever one of these).

    An owned one (`owner`, a virtual key's id) is always the triple as JSON after
    `owned:json:`: past `scillm:codeworld:` its name holds two colons or more, which no
    plain name does (one), and starts `owned:`, where an unscoped JSON name starts `json:`;
    so no unscoped session's list is ever an owned one's, nor one owner's another's."""
    if owner:
        return "scillm:codeworld:owned:json:" + json.dumps([owner, session_id, track])
    if ":" in session_id or ":" in track:
        return "scillm:codeworld:json:" + json.dumps([session_id, track])
    return f"scillm:codeworld:{session_id}:{track}"


class RedisSessionStore:
    """Session history in Redis lists (`scillm:codeworld:<session>:<track>`, a virtual
    key's own apart: `session_key`), shared by replicas; the same plateau rule as
    SessionStore. With ``retention_days``, each list expires that long after its last
    run (see the module docstring)."""

    def __init__(self, url: str, *, window: int = 5, threshold: float = 0.01,
                 retention_days: float = 0) -> None:
        self._url = url
        self._window = window
        self._threshold = threshold
        self.retention_days = retention_days
        #: A list's time to live in whole seconds (Redis's EXPIRE), 0 for none.
        self._ttl_s = max(int(retention_days * DAY_S), 0)
        self._redis: Any = None

    @property
    def location(self) -> str:
        """Where the history is kept (for logs): the URL without its password."""
        head, at, tail = self._url.rpartition("@")
        return head.split("://", 1)[0] + "://***@" + tail if at else self._url

    def open(self) -> None:
        """Create the client (connections open on first use)."""
        import redis.asyncio as redis

        from ..redis_outage import client_options

        # A store that is down fails the write in about a second, not after retries.
        self._redis = redis.Redis.from_url(self._url, **client_options())

    def close(self) -> None:
        """Drop the client (its pool closes with the loop)."""
        self._redis = None

    async def record(self, session_id: str, track: str, mean_aggregate: float, *,
                     owner: str = "") -> SessionInfo:
        """Append a run's mean to `owner`'s (session, track) atomically and say whether
        the track has plateaued."""
        if self._redis is None:
            raise SessionStoreError("the Redis session store is not open")
        name = session_key(session_id, track, owner)
        try:  # the last `window` means, not the whole list: a record costs O(window)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lrange(name, -self._window, -1)
                pipe.rpush(name, repr(float(mean_aggregate)))
                # The list lives `retention_days` after its last run; without retention,
                # for ever (a retention configured before no longer applies to it).
                if self._ttl_s:
                    pipe.expire(name, self._ttl_s)
                else:
                    pipe.persist(name)
                recent, length, _ = await pipe.execute()
        except Exception as exc:  # any redis failure is the store's failure
            raise SessionStoreError(f"redis session store: {exc}") from exc
        return plateau_info(session_id, track, [float(v) for v in recent], int(length) - 1,
                            mean_aggregate, self._window, self._threshold)

    async def sweep(self, now: float, batch: int) -> AsyncGenerator[int, None]:
        """Give the retention as time to live to the session lists with none (written
        before it was set) or a longer one (written under a longer retention), scanning
        ``batch`` keys a call; yields how many of each scan it gave it to. Lists written
        since expire by themselves; nothing is deleted here, and ``now`` is unused (Redis
        keeps the time). Nothing with a retention of 0."""
        if not self._ttl_s:
            return
        if self._redis is None:
            raise SessionStoreError("the Redis session store is not open")
        cursor = 0
        try:
            while True:
                cursor, names = await self._redis.scan(cursor, match=_REDIS_PREFIX + "*",
                                                       count=batch)
                given = 0
                if names:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for name in names:
                            pipe.ttl(name)
                        ttls = await pipe.execute()
                    # -1: no expiry; -2: gone meanwhile. A write meanwhile set the same.
                    longer = [n for n, ttl in zip(names, ttls, strict=True)
                              if ttl == -1 or ttl > self._ttl_s]
                    if longer:
                        async with self._redis.pipeline(transaction=False) as pipe:
                            for name in longer:
                                pipe.expire(name, self._ttl_s)
                            given = sum(bool(set_) for set_ in await pipe.execute())
                yield given
                if int(cursor) == 0:
                    break
        except Exception as exc:  # any redis failure is the store's failure
            raise SessionStoreError(f"redis session store: {exc}") from exc
