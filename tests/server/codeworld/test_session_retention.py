"""Session retention: with a retention of N days, CodeWorld session history is bounded by
it, as the run store is. A SQLite file loses the runs recorded more than N days ago (the
engine sweeps at start and hourly, in batches, runs recorded meanwhile; `scillm runs prune`
does it once); a Redis list expires N days after its last run.

Session history was never swept: with SCILLM_RUN_RETENTION_DAYS set, runs went from the
run store while `codeworld_runs` and `codeworld_owned_runs` (and the Redis lists) grew for
ever. On real SQLite files and a real redis-server; time is passed as `created` values
and an injected clock, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from scillm.server.codeworld import (
    CodeWorldEngine,
    CodeWorldSettings,
    SandboxSettings,
    SessionStore,
    SessionSweeper,
    prune_sessions,
    session_db_path,
)
from scillm.server.codeworld._sessions import RedisSessionStore, session_key

DAY = 86_400.0
SCILLM = str(Path(sys.executable).parent / "scillm")


def _insert(path: Path, rows: list[tuple[str, str, str, int, float, float]]) -> None:
    """Rows (owner, session, track, index, mean, created) as a server records them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.executemany("INSERT INTO codeworld_runs VALUES (?, ?, ?, ?, ?)",
                       [r[1:] for r in rows if not r[0]])
        if owned := [r for r in rows if r[0]]:
            db.executemany("INSERT INTO codeworld_owned_runs VALUES (?, ?, ?, ?, ?, ?)",
                           owned)
        db.commit()


def _kept(path: Path) -> set[tuple[str, str, int]]:
    """(owner, session, index) of every row left."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return ({("", s, i) for s, i in db.execute("SELECT session_id, idx FROM codeworld_runs")}
                | {(o, s, i) for o, s, i in db.execute(
                    "SELECT owner, session_id, idx FROM codeworld_owned_runs")})


def _history(now: float) -> list[tuple[str, str, str, int, float, float]]:
    """`gone`: every run 40 days old, unscoped and a key's; `mixed`: two runs 40 days old
    then two a day old; `fresh`: one run an hour old."""
    rows = [(owner, "gone", "t", i, 0.5, now - 40 * DAY)
            for owner in ("", "key-a") for i in range(3)]
    rows += [("", "mixed", "t", i, 0.5, now - (40 if i < 2 else 1) * DAY) for i in range(4)]
    rows += [("key-a", "fresh", "t", 0, 0.5, now - 3600)]
    return rows


async def _no_pause() -> None:
    return None


def _store(path: Path, retention_days: float, window: int = 2) -> SessionStore:
    store = SessionStore(str(path), window=window, retention_days=retention_days)
    store.open()
    return store


async def test_a_sweep_deletes_the_runs_older_than_the_retention_in_batches(
        tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    store = _store(path, 30)
    try:
        _insert(path, _history(now))
        counts = [n async for n in store.sweep(now, 2)]
        # At most one batch a statement; each table until a statement finds fewer.
        assert max(counts) == 2 and sum(counts) == 8
        assert _kept(path) == {("", "mixed", 2), ("", "mixed", 3), ("key-a", "fresh", 0)}
        # A day later than the retention allows, `mixed` goes too; `fresh` is an hour old.
        assert sum([n async for n in store.sweep(now + 29.5 * DAY, 500)]) == 2
        assert _kept(path) == {("key-a", "fresh", 0)}
    finally:
        store.close()


async def test_a_session_still_in_use_keeps_its_count_and_a_forgotten_one_starts_again(
        tmp_path: Path) -> None:
    """The next index follows the newest kept run (none kept is ever taken again); the
    plateau window reads only the runs kept; a session with no run within the retention
    is a new one."""
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    store = _store(path, 30, window=3)
    try:
        _insert(path, _history(now))
        assert await SessionSweeper(store, clock=lambda: now).sweep() == 8
        mixed = await store.record("mixed", "t", 0.5)
        gone = await store.record("gone", "t", 0.5)
        gone_owned = await store.record("gone", "t", 0.5, owner="key-a")
        fresh = await store.record("fresh", "t", 0.9, owner="key-a")
    finally:
        store.close()
    # Four runs before it, two of them kept: index 4, a mean of two, no plateau (before
    # the sweep its window of three means of 0.5 made this run of 0.5 a plateau).
    assert (mixed.index, mixed.previous_mean, mixed.plateau) == (4, pytest.approx(0.5), False)
    assert (gone.index, gone.previous_mean) == (0, None)
    assert (gone_owned.index, gone_owned.previous_mean) == (0, None)
    assert (fresh.index, fresh.previous_mean) == (1, pytest.approx(0.5))


async def test_without_retention_nothing_is_swept(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    store = _store(path, 0)
    try:
        _insert(path, _history(now))
        assert [n async for n in store.sweep(now + 1000 * DAY, 500)] == []
        sweeper = SessionSweeper(store)
        sweeper.start()  # with no retention, no task
        await sweeper.stop()
    finally:
        store.close()
    assert len(_kept(path)) == 11


async def test_runs_recorded_during_a_sweep_are_kept_and_numbered_on(tmp_path: Path) -> None:
    """Between two batches the store is the recorders': every run recorded meanwhile is
    kept, each with the next index."""
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    store = _store(path, 30)
    recorded: list[int] = []

    async def record_one() -> None:
        recorded.append((await store.record("live", "t", 0.5)).index)

    try:
        _insert(path, [("", f"old-{i}", "t", 0, 0.5, now - 40 * DAY) for i in range(250)])
        swept = await SessionSweeper(store, batch=20, clock=lambda: now,
                                     pause=record_one).sweep()
    finally:
        store.close()
    assert swept == 250
    assert recorded == list(range(len(recorded))) and len(recorded) >= 12
    assert _kept(path) == {("", "live", i) for i in recorded}


async def test_the_sweeper_sweeps_when_started_and_again_each_interval(tmp_path: Path) -> None:
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    store = _store(path, 30)
    _insert(path, _history(now))
    times = iter([now, now + 29.5 * DAY])
    swept: list[int] = []
    second = asyncio.Event()

    def on_swept(count: int) -> None:
        swept.append(count)
        if len(swept) == 2:
            second.set()

    sweeper = SessionSweeper(store, interval_s=0.01, clock=lambda: next(times, now + 60 * DAY),
                             pause=_no_pause, on_swept=on_swept)
    try:
        sweeper.start()
        await asyncio.wait_for(second.wait(), 60)
        await sweeper.stop()
    finally:
        store.close()
    assert swept[:2] == [8, 2]


async def test_the_engine_sweeps_its_history_when_it_starts(tmp_path: Path) -> None:
    """The engine's retention (`session_retention_days`, the serving process's run
    retention) sweeps from its start; an engine without one keeps everything."""
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    SessionStore(str(path)).open()  # the tables, as a server made them
    _insert(path, _history(now))

    def engine(days: int) -> CodeWorldEngine:
        return CodeWorldEngine(CodeWorldSettings(
            sandbox=SandboxSettings(workers=1), session_db=str(path),
            session_retention_days=days))

    async with engine(0):
        await asyncio.sleep(0)
    assert len(_kept(path)) == 11
    async with engine(30):
        for _ in range(1000):  # the first sweep runs in the engine's task
            if len(_kept(path)) == 3:
                break
            await asyncio.sleep(0.01)
    assert _kept(path) == {("", "mixed", 2), ("", "mixed", 3), ("key-a", "fresh", 0)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prune_sessions_counts_dry_and_changes_no_schema(tmp_path: Path) -> None:
    """`scillm runs prune` on a file older servers made: a dry run changes no byte; a
    prune deletes without making the index; a missing file or table holds nothing."""
    now = time.time()
    path = tmp_path / "codeworld.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:  # before sessions had owners
        db.execute("CREATE TABLE codeworld_runs (session_id TEXT NOT NULL, track TEXT NOT "
                   "NULL, idx INTEGER NOT NULL, mean_aggregate REAL NOT NULL, created REAL "
                   "NOT NULL, PRIMARY KEY (session_id, track, idx))")
        db.commit()
    _insert(path, [r for r in _history(now) if not r[0]])
    before = _digest(path)
    assert prune_sessions(path, 30, now=now, dry_run=True) == 5
    assert _digest(path) == before
    assert prune_sessions(path, 30, now=now, batch=2, pause_s=0) == 5
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert {n for (n,) in db.execute("SELECT name FROM sqlite_master")} == {
            "codeworld_runs", "sqlite_autoindex_codeworld_runs_1"}
        assert sorted(db.execute("SELECT session_id, idx FROM codeworld_runs")) == [
            ("mixed", 2), ("mixed", 3)]
    assert prune_sessions(tmp_path / "none.sqlite3", 30) == 0
    assert not (tmp_path / "none.sqlite3").exists()


def test_runs_prune_prunes_the_session_history_beside_the_store(tmp_path: Path) -> None:
    """`scillm runs prune` (the run store and, beside it, codeworld.sqlite3)."""
    from scillm.server.manifests import open_run_store

    open_run_store(tmp_path / "runs.sqlite3").close()
    path = session_db_path(tmp_path / "runs.sqlite3")
    SessionStore(str(path)).open()
    now = time.time()
    _insert(path, _history(now))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCILLM_STORE")}
    env["SCILLM_STORE_PATH"] = str(tmp_path / "runs.sqlite3")

    def prune(*extra: str) -> str:
        done = subprocess.run([SCILLM, "runs", "prune", "--older-than", "30", *extra],
                              capture_output=True, text=True, env=env, timeout=120,
                              check=False)
        assert (done.returncode, done.stderr) == (0, ""), done.stderr
        return done.stdout

    out = prune("--dry-run").splitlines()
    assert out[0].startswith("would remove 0 runs")
    assert out[1] == (f"would remove 8 CodeWorld session runs recorded more than 30 days ago "
                      f"({path})")
    assert len(_kept(path)) == 11
    assert prune().splitlines()[1].startswith("removed 8 CodeWorld session runs")
    assert len(_kept(path)) == 3


def _redis_store(port: int, retention_days: float) -> RedisSessionStore:
    store = RedisSessionStore(f"redis://127.0.0.1:{port}/6", window=2,
                              retention_days=retention_days)
    store.open()
    return store


@pytest.fixture
async def redis(redis_port: int) -> AsyncIterator[Any]:
    """A client of the tests' own database (6) on the real redis-server, emptied."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{redis_port}/6")
    await client.flushdb()
    yield client
    await client.aclose()


async def test_a_redis_list_expires_the_retention_after_its_last_run(
        redis_port: int, redis: Any) -> None:
    store = _redis_store(redis_port, 30)
    name = session_key("exp", "t")
    first = await store.record("exp", "t", 0.5)
    assert 29 * DAY < await redis.ttl(name) <= 30 * DAY
    await redis.expire(name, 60)  # time passes: the next run sets it again
    second = await store.record("exp", "t", 0.5)
    assert 29 * DAY < await redis.ttl(name) <= 30 * DAY
    assert (first.index, second.index, second.previous_mean) == (0, 1, pytest.approx(0.5))
    owned = session_key("exp", "t", "key-a")
    await store.record("exp", "t", 0.5, owner="key-a")
    assert 29 * DAY < await redis.ttl(owned) <= 30 * DAY
    # Retention off again: a list written keeps its runs for ever.
    kept = _redis_store(redis_port, 0)
    third = await kept.record("exp", "t", 0.5)
    assert third.index == 2 and await redis.ttl(name) == -1


async def test_a_redis_sweep_gives_older_lists_the_retention(redis_port: int,
                                                             redis: Any) -> None:
    """Lists written before retention was set (no expiry) or under a longer one get its
    expiry; other keys and lists that have it are left as they are."""
    store = _redis_store(redis_port, 30)
    names = [session_key(f"before-{i}", "t") for i in range(5)]
    for name in names:
        await redis.rpush(name, "0.5")
    await redis.expire(names[0], int(100 * DAY))
    await redis.expire(names[1], int(DAY))
    await redis.set("other", "x")
    swept = await SessionSweeper(store, batch=1, pause=_no_pause).sweep()
    assert swept == 4
    ttls = [await redis.ttl(name) for name in names]
    assert ttls[1] <= DAY and all(29 * DAY < t <= 30 * DAY for t in ttls[:1] + ttls[2:])
    assert await redis.ttl("other") == -1
    # What they held is still theirs.
    after = await store.record("before-2", "t", 0.7)
    assert (after.index, after.previous_mean) == (1, pytest.approx(0.5))
    assert await SessionSweeper(store).sweep() == 0

