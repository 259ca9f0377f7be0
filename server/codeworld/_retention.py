"""Session retention: the CodeWorld session history a deployment keeps is bounded by the
run retention (``SCILLM_RUN_RETENTION_DAYS``), as its runs are.

``SessionSweeper`` sweeps the engine's session store on the run sweeper's schedule
(``scillm.server.manifests``: when the engine starts, then every hour; at most 500 rows a
statement, on a worker thread, with a pause after each full one so that runs are recorded
meanwhile), in a task of the engine's loop. What a sweep does is the store's own
(``SessionStore.sweep`` deletes the runs recorded before the retention;
``RedisSessionStore.sweep`` gives its lists the expiry they lack). Replicas or workers
sharing one store sweep it at once safely: a row is deleted by one of them and not found
by the others.

``prune_sessions`` is the SQLite deletion done once, for ``scillm runs prune``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ..manifests._retention import BATCH, INTERVAL_S, PAUSE_S
from ._sessions import (
    DAY_S,
    SESSION_TABLES,
    RedisSessionStore,
    SessionStore,
    count_before,
    delete_before,
)
from .errors import SessionStoreError

__all__ = ["SESSION_DB", "SessionSweeper", "prune_sessions", "session_db_path"]

log = logging.getLogger("scillm.server")

#: The file name of a serving process's session history, beside its run store.
SESSION_DB = "codeworld.sqlite3"


def session_db_path(store_path: Path) -> Path:
    """Where a serving process keeps CodeWorld session history: beside the run store."""
    return store_path.with_name(SESSION_DB)


class SessionSweeper:
    """Sweeps ``store`` now, then every ``interval_s``, until stopped (see the module
    docstring). ``clock`` (seconds since the epoch), ``pause`` (awaited after a full
    batch) and ``on_swept`` (given each sweep's count) are the tests' hooks."""

    def __init__(self, store: SessionStore | RedisSessionStore, *,
                 interval_s: float = INTERVAL_S, batch: int = BATCH,
                 clock: Callable[[], float] = time.time,
                 pause: Callable[[], Awaitable[None]] | None = None,
                 on_swept: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._interval_s = interval_s
        self._batch = batch
        self._clock = clock
        self._pause = pause or (lambda: asyncio.sleep(PAUSE_S))
        self._on_swept = on_swept
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def sweep(self) -> int:
        """One sweep: how many rows it deleted (SQLite) or lists it gave an expiry (Redis).
        Ends early, between two statements, once ``stop`` is called."""
        swept = 0
        async with contextlib.aclosing(self._store.sweep(self._clock(), self._batch)) as batches:
            async for count in batches:
                swept += count
                if self._stopping.is_set():
                    break
                if count >= self._batch:
                    await self._pause()
        what = ("gave %d session lists an expiry of %g days"
                if isinstance(self._store, RedisSessionStore)
                else "removed %d session runs recorded more than %g days ago")
        log.info("codeworld session retention: " + what + " (%s)", swept,
                 self._store.retention_days, self._store.location)
        if self._on_swept is not None:
            self._on_swept(swept)
        return swept

    async def _sweep_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.sweep()
            except SessionStoreError as exc:  # busy, unreachable, full: the next one retries
                log.warning("codeworld session retention: sweep of %s failed, next in %gs: "
                            "%s", self._store.location, self._interval_s, exc)
            except Exception:
                log.exception("codeworld session retention: sweep of %s failed",
                              self._store.location)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval_s)

    def start(self) -> None:
        """Sweep now, then every ``interval_s``, in a task of the running loop (nothing
        with a retention of 0)."""
        if self._store.retention_days > 0 and self._task is None:
            self._stopping = asyncio.Event()  # of this loop
            self._task = asyncio.create_task(self._sweep_forever(),
                                             name="codeworld-session-retention")

    async def stop(self) -> None:
        """Stop sweeping, once the statement under way has ended: the store may then be
        closed (a statement on a thread cannot be cancelled)."""
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None


def prune_sessions(path: Path, older_than_days: float, *, now: float | None = None,
                   dry_run: bool = False, batch: int = BATCH,
                   pause_s: float = PAUSE_S) -> int:
    """Delete (dry: count) the session runs of the SQLite file at ``path`` recorded more
    than ``older_than_days`` days before ``now`` (default: the time now), ``batch`` a
    statement; how many. Safe while servers use the file. It changes nothing else: no
    table or index is made (a dry run opens the file read-only), and a file or table that
    is not there holds nothing to prune. Blocking."""
    if not path.is_file():
        return 0
    before = (time.time() if now is None else now) - older_than_days * DAY_S
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'ro' if dry_run else 'rw'}",
                             uri=True)
    except sqlite3.Error as exc:
        raise SessionStoreError(f"cannot open {path}: {exc}") from exc
    try:
        with contextlib.closing(db):
            tables = {name for (name,) in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            pruned = 0
            for table in (t for t in SESSION_TABLES if t in tables):
                if dry_run:
                    pruned += count_before(db, table, before)
                    continue
                while (deleted := delete_before(db, table, before, batch)) == batch:
                    pruned += deleted
                    time.sleep(pause_s)
                pruned += deleted
            return pruned
    except sqlite3.Error as exc:
        raise SessionStoreError(f"{path}: {exc}") from exc
