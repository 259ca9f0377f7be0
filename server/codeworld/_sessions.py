"""Sessions: each run's mean aggregate per (session, track), and a plateau signal.

Kept in memory and SQLite (SessionStore), or in Redis (RedisSessionStore) when the
service runs as several replicas.

A session is its owner's: `owner` is the id of the virtual key that records it, and
another key naming the same (session, track) has a history of its own. Before, sessions
were keyed by (session, track) alone, so with keys on a caller naming another's session
read its run count and means and moved its plateau signal with runs of its own. The
unscoped sessions (owner ""; every caller's with keys off, the master key's with keys on)
are stored exactly as they always were, so a store written before keeps its history.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
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
    PRIMARY KEY (owner, session_id, track, idx))""")


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
    run grew the server without end.
    """

    def __init__(self, path: str = ":memory:", *, window: int = 5,
                 threshold: float = 0.01) -> None:
        self._path = path
        self._window = window
        self._threshold = threshold
        self._db: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

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
    SessionStore."""

    def __init__(self, url: str, *, window: int = 5, threshold: float = 0.01) -> None:
        self._url = url
        self._window = window
        self._threshold = threshold
        self._redis: Any = None

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
                recent, length = await pipe.execute()
        except Exception as exc:  # any redis failure is the store's failure
            raise SessionStoreError(f"redis session store: {exc}") from exc
        return plateau_info(session_id, track, [float(v) for v in recent], int(length) - 1,
                            mean_aggregate, self._window, self._threshold)
