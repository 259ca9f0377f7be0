"""Sessions: each run's mean aggregate per (session, track), and a plateau signal.

Kept in memory and SQLite (SessionStore), or in Redis (RedisSessionStore) when the
service runs as several replicas."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import defaultdict
from typing import Any

from ._events import SessionInfo
from .errors import SessionStoreError

_SCHEMA = """CREATE TABLE IF NOT EXISTS codeworld_runs (
    session_id TEXT NOT NULL, track TEXT NOT NULL, idx INTEGER NOT NULL,
    mean_aggregate REAL NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (session_id, track, idx))"""


class SessionStore:
    """Keeps run means in memory and in SQLite (``path``; ``":memory:"`` keeps none).

    ``record`` reports a plateau when at least ``window`` earlier runs exist and the gain
    of this run over the mean of the previous ``window`` is below ``threshold``.
    """

    def __init__(self, path: str = ":memory:", *, window: int = 5,
                 threshold: float = 0.01) -> None:
        self._path = path
        self._window = window
        self._threshold = threshold
        self._db: sqlite3.Connection | None = None
        self._history: dict[tuple[str, str], list[float]] = defaultdict(list)
        self._loaded: set[tuple[str, str]] = set()
        self._lock = asyncio.Lock()

    def open(self) -> None:
        """Open the database and create the table."""
        try:
            self._db = sqlite3.connect(self._path, check_same_thread=False)
            self._db.execute(_SCHEMA)
            self._db.commit()
        except sqlite3.Error as exc:
            raise SessionStoreError(f"cannot open {self._path}: {exc}") from exc

    def close(self) -> None:
        """Close the database."""
        if self._db is not None:
            self._db.close()
            self._db = None

    async def record(self, session_id: str, track: str, mean_aggregate: float) -> SessionInfo:
        """Append a run's mean and say whether the track has plateaued."""
        async with self._lock:
            return await asyncio.to_thread(self._record, session_id, track, mean_aggregate)

    def history(self, session_id: str, track: str) -> list[float]:
        """The means recorded so far (loaded from SQLite on first use)."""
        key = (session_id, track)
        if key not in self._loaded and self._db is not None:
            try:
                rows = self._db.execute(
                    "SELECT mean_aggregate FROM codeworld_runs WHERE session_id=? AND track=?"
                    " ORDER BY idx", key).fetchall()
            except sqlite3.Error as exc:
                raise SessionStoreError(str(exc)) from exc
            self._history[key] = [float(r[0]) for r in rows]
        self._loaded.add(key)
        return list(self._history[key])

    def _record(self, session_id: str, track: str, value: float) -> SessionInfo:
        previous = self.history(session_id, track)
        info = plateau_info(session_id, track, previous, value, self._window, self._threshold)
        index = len(previous)
        if self._db is not None:
            try:
                self._db.execute("INSERT INTO codeworld_runs VALUES (?, ?, ?, ?, ?)",
                                 (session_id, track, index, value, time.time()))
                self._db.commit()
            except sqlite3.Error as exc:
                raise SessionStoreError(str(exc)) from exc
        self._history[(session_id, track)].append(value)
        return info


def plateau_info(session_id: str, track: str, previous: list[float], value: float,
                 window: int, threshold: float) -> SessionInfo:
    """This run's place in its track: the gain over the mean of the previous `window`."""
    recent = previous[-window:]
    previous_mean = sum(recent) / len(recent) if recent else None
    gain = None if previous_mean is None else value - previous_mean
    plateau = gain is not None and len(recent) >= window and gain < threshold
    return SessionInfo(session_id, track, len(previous), value, previous_mean, gain, plateau)


def session_key(session_id: str, track: str) -> str:
    """The Redis list of a (session, track): `scillm:codeworld:<session>:<track>`, as it
    always was when neither holds a colon; otherwise the pair as JSON after `json:`, so
    ("a:b", "c") and ("a", "b:c") keep two histories (that JSON holds a colon, which a
    plain name's two parts cannot both lack, so no plain name is ever one of these)."""
    if ":" in session_id or ":" in track:
        return "scillm:codeworld:json:" + json.dumps([session_id, track])
    return f"scillm:codeworld:{session_id}:{track}"


class RedisSessionStore:
    """Session history in Redis lists (`scillm:codeworld:<session>:<track>`), shared by
    replicas; the same plateau rule as SessionStore."""

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

    async def record(self, session_id: str, track: str, mean_aggregate: float) -> SessionInfo:
        """Append a run's mean atomically and say whether the track has plateaued."""
        if self._redis is None:
            raise SessionStoreError("the Redis session store is not open")
        name = session_key(session_id, track)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lrange(name, 0, -1)
                pipe.rpush(name, repr(float(mean_aggregate)))
                previous, _ = await pipe.execute()
        except Exception as exc:  # any redis failure is the store's failure
            raise SessionStoreError(f"redis session store: {exc}") from exc
        return plateau_info(session_id, track, [float(v) for v in previous], mean_aggregate,
                            self._window, self._threshold)
