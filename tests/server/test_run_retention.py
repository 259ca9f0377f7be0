"""Run retention: runs inactive for longer than the store keeps them are deleted, by the
serving process (`RunSweeper`) and by `scillm runs prune`, on a real SQLite file and a real
PostgreSQL server (each test runs on both), with the clock injected rather than waited for.

A run's last activity is its end; a run still streaming is kept active by the process
running it; writes go on while a sweep deletes, and two sweepers at once share the work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import test_run_store_pg as pg
from google.protobuf import empty_pb2
from meshutil import mesh_settings, start_mesh

from scillm.common.v1 import common_pb2
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.manifests import (
    ManifestClock,
    Pruned,
    RunStore,
    RunSweeper,
    open_run_store,
    prune,
    recording,
    run_state,
)
from scillm.server.manifests._store import instant
from scillm.server.settings import Settings

SCILLM = str(Path(sys.executable).parent / "scillm")
DAY = 86_400.0
#: The injected "now" of the sweeps below (2027).
NOW = 1_800_000_000.0

#: Fixtures: the real PostgreSQL server of the run store's own tests, a database on it per
#: test, and `location`: a SQLite file, then that database (each test runs on both).
pg_server, pg_url, location = pg.pg_server, pg.pg_url, pg.location


def _run(run_id: str, *, started: float, ended: float | None
         ) -> tuple[common_pb2.RunManifest, pb.ProveRequest, pb.ProveSummary]:
    """A Prove run started at `started` (seconds since the epoch), ended at `ended` (None:
    still running), and its request and result."""
    manifest = common_pb2.RunManifest(run_id=run_id, service="prove", session_id="s")
    manifest.start_time.FromMicroseconds(int(started * 1e6))
    if ended is not None:
        manifest.end_time.FromMicroseconds(int(ended * 1e6))
    request = pb.ProveRequest(items=[pb.Obligation(item_id="i", statement="(assert true)")])
    return manifest, request, pb.ProveSummary(items=1, manifest=manifest)


def _put(store: RunStore, run_id: str, *, started: float, ended: float) -> None:
    store.put_sync(*_run(run_id, started=started, ended=ended))


def _ids(store: RunStore) -> set[str]:
    return {m.run_id for m in store.list(limit=-1)}


def _sweeper(store: RunStore, days: float, now: float = NOW, **kwargs: object) -> RunSweeper:
    return RunSweeper(store, days, clock=lambda: now, **kwargs)  # type: ignore[arg-type]


async def test_runs_go_by_their_last_activity(location: str, tmp_path: Path) -> None:
    """Ended runs go a retention period after their end (not their start); a run left
    running by a process that died goes by its start; days 0 keeps everything."""
    store = open_run_store(location)
    try:
        _put(store, "ended-40-days-ago", started=NOW - 40 * DAY, ended=NOW - 40 * DAY + 60)
        _put(store, "long-ended-10-days-ago", started=NOW - 40 * DAY, ended=NOW - 10 * DAY)
        _put(store, "ended-yesterday", started=NOW - DAY - 60, ended=NOW - DAY)
        # Interrupted 31 days ago: ended without a result.
        gone, request, _ = _run("interrupted-31-days-ago", started=NOW - 31 * DAY,
                                ended=NOW - 31 * DAY)
        store.put_sync(gone, request, empty_pb2.Empty())
        # Started 40 days ago by a process that is gone: never ended, nobody runs it.
        orphan = open_run_store(location)
        try:
            await orphan.started(*_run("orphan-40-days", started=NOW - 40 * DAY, ended=None)[:2])
        finally:
            orphan.close()
        traces = tmp_path / "agent-traces"
        traces.mkdir()
        for name, age in (("old", 31 * DAY), ("new", DAY)):
            (traces / f"{name}.jsonl").write_text("{}\n")
            os.utime(traces / f"{name}.jsonl", (NOW - age, NOW - age))

        assert await _sweeper(store, 0, trace_dir=traces).sweep() == Pruned(0, 0)
        assert len(_ids(store)) == 5

        swept = await _sweeper(store, 30, trace_dir=traces).sweep()
        assert swept == Pruned(runs=3, traces=1)
        assert _ids(store) == {"long-ended-10-days-ago", "ended-yesterday"}
        assert [p.name for p in traces.iterdir()] == ["new.jsonl"]
        assert await _sweeper(store, 30, trace_dir=traces).sweep() == Pruned(0, 0)
        # A year later, the rest goes too.
        assert (await _sweeper(store, 30, now=NOW + 365 * DAY).sweep()).runs == 2
    finally:
        store.close()


async def test_a_run_still_streaming_is_never_swept(location: str) -> None:
    """A run that has streamed for longer than retention keeps its row while it runs (its
    process says it is active at each sweep), and is stored done when it ends."""
    store = open_run_store(location)
    try:
        clock = ManifestClock("prove", common_pb2.RunContext(session_id="long"),
                              request_id="r")
        start = clock.manifest.start_time.seconds
        request = pb.ProveRequest(items=[pb.Obligation(item_id="i", statement="x")])
        async with recording(store, clock, request) as record:
            for days in (31, 62, 93):  # hourly sweeps, months on
                assert (await _sweeper(store, 30, now=start + days * DAY).sweep()).runs == 0
                stored = store.get(clock.manifest.run_id)
                assert stored is not None and run_state(stored.manifest, stored.result) \
                    == "running", days
            await record.put(clock.finish(), pb.ProveSummary(items=1))
        stored = store.get(clock.manifest.run_id)
        assert stored is not None and run_state(stored.manifest, stored.result) == "done"
        # Ended now: kept for 30 days from its end, then swept.
        end = clock.manifest.end_time.seconds
        assert (await _sweeper(store, 30, now=end + 29 * DAY).sweep()).runs == 0
        assert (await _sweeper(store, 30, now=end + 31 * DAY).sweep()).runs == 1
    finally:
        store.close()


async def test_writes_go_on_while_a_backlog_is_swept_in_batches(
        location: str) -> None:
    """Between two batches the store is free: another connection stores new runs and ends
    an old one (`pause` is where the sweeper waits between batches). Each kept."""
    store, writer = open_run_store(location), open_run_store(location)
    try:
        for i in range(300):
            _put(store, f"old-{i:04d}", started=NOW - 90 * DAY, ended=NOW - 90 * DAY)
        pauses: list[int] = []

        async def pause() -> None:
            n = len(pauses)
            pauses.append(n)
            await asyncio.to_thread(_put, writer, f"new-{n}", started=NOW, ended=NOW + 1)
            if n == 0:  # an old run stored again, ended now: active, so kept
                await asyncio.to_thread(_put, writer, "old-0299", started=NOW - 90 * DAY,
                                        ended=NOW)
            await asyncio.sleep(0)

        swept = await _sweeper(store, 30, batch=25, pause=pause).sweep()
        assert len(pauses) >= 300 // 25 - 1  # batches, each its own statement
        assert _ids(store) == {f"new-{n}" for n in pauses} | {"old-0299"}
        assert swept.runs in (299, 300)  # old-0299: gone before it was stored again, or not
    finally:
        store.close()
        writer.close()


async def test_two_sweepers_at_once_share_the_work(location: str,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """Two processes' sweepers (two connections, two threads) on one store, with runs
    stored meanwhile: every old run deleted once, no error, the new runs kept. (The writer
    breathes between runs, as a server's requests do: one writing back to back can hold a
    SQLite file past the others' lock timeout, sweepers' or not.)"""
    stores = [open_run_store(location) for _ in range(3)]
    try:
        for i in range(400):
            _put(stores[0], f"old-{i:04d}", started=NOW - 90 * DAY, ended=NOW - 90 * DAY)
        stop = threading.Event()

        def write() -> int:
            n = 0
            while not stop.wait(0.002) or n < 5:
                _put(stores[2], f"new-{n}", started=NOW, ended=NOW + 1)
                n += 1
            return n

        writing = asyncio.create_task(asyncio.to_thread(write))
        caplog.set_level(logging.INFO, logger="scillm")
        swept = await asyncio.gather(*(_sweeper(s, 30, batch=20).sweep() for s in stores[:2]))
        stop.set()
        written = await writing
        assert sum(s.runs for s in swept) == 400
        assert _ids(stores[0]) == {f"new-{n}" for n in range(written)}
        said = [r for r in caplog.records if "run retention" in r.getMessage()]
        assert [r.levelno for r in said] == [logging.INFO] * 2
        assert all(re.search(r"removed \d+ runs", r.getMessage()) for r in said)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        for store in stores:
            store.close()


async def test_a_sweep_waits_out_a_busy_store(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A SQLite file held by a writer past the store's lock timeout fails a batch as busy
    (UNAVAILABLE, as it would fail a run's write): the sweep asks again after a wait
    instead of giving up until the next hour."""
    where = tmp_path / "runs.sqlite3"
    store = open_run_store(where)
    holder = sqlite3.connect(where, isolation_level=None)
    try:
        _put(store, "old", started=NOW - 90 * DAY, ended=NOW - 90 * DAY)
        holder.execute("BEGIN EXCLUSIVE")
        caplog.set_level(logging.WARNING, logger="scillm")
        sweeping = asyncio.create_task(_sweeper(store, 30).sweep())
        deadline = time.monotonic() + 60
        while not any("cannot write" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline and not sweeping.done()
            await asyncio.sleep(0.05)
        holder.execute("COMMIT")
        assert (await sweeping).runs == 1 and _ids(store) == set()
    finally:
        holder.close()
        store.close()


def _legacy_store(where: str) -> None:
    """A run store as a server before retention made it (no `active_time`), with a run
    started 90 days before `NOW` and one started a day before."""
    columns = ("run_id TEXT PRIMARY KEY, service TEXT NOT NULL, session_id TEXT NOT NULL, "
               "track TEXT NOT NULL, model TEXT NOT NULL, request_id TEXT NOT NULL, "
               "start_time TEXT NOT NULL, manifest {blob} NOT NULL, request_type TEXT NOT NULL, "
               "request {blob} NOT NULL, result_type TEXT NOT NULL, result {blob} NOT NULL, "
               "events TEXT NOT NULL DEFAULT '[]'")
    rows = []
    for run_id, started in (("before", NOW - 90 * DAY), ("recent", NOW - DAY)):
        manifest, request, result = _run(run_id, started=started, ended=started + 1)
        rows.append((run_id, "prove", "s", "", "", "", manifest.start_time.ToJsonString(),
                     manifest.SerializeToString(), request.DESCRIPTOR.full_name,
                     request.SerializeToString(), result.DESCRIPTOR.full_name,
                     result.SerializeToString(), "[]"))
    if "://" not in where:
        with sqlite3.connect(where) as db:
            db.execute(f"CREATE TABLE runs ({columns.format(blob='BLOB')})")
            db.executemany(f"INSERT INTO runs VALUES ({', '.join('?' * 13)})", rows)
        return
    import psycopg

    with psycopg.connect(where, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE runs ({columns.format(blob='BYTEA')})")
        for row in rows:
            conn.execute(f"INSERT INTO runs VALUES ({', '.join(['%s'] * 13)})", row)


async def test_a_store_made_before_retention_is_upgraded(location: str) -> None:
    """Its rows go by their start time; opened by several processes at once (a serving
    process creating, `scillm runs prune` not), it takes the new column once."""
    _legacy_store(location)
    readers = [open_run_store(location, create=False) for _ in range(2)]
    try:
        assert _ids(readers[0]) == {"before", "recent"}  # reading needs no upgrade
        dry = await asyncio.gather(*(asyncio.to_thread(
            prune, r, 30, now=NOW, dry_run=True) for r in readers))
        assert dry == [Pruned(1, 0)] * 2
        # A dry run changes nothing, the schema included (an ALTER TABLE takes the table's
        # exclusive lock, an index build blocks an older server's writes).
        assert not any(r._has_active_time() for r in readers)
        opened = await asyncio.gather(*(asyncio.to_thread(open_run_store, location)
                                        for _ in range(3)))
        for store in opened:
            store.close()
        assert prune(readers[1], 30, now=NOW) == Pruned(1, 0)
        assert _ids(readers[0]) == {"recent"}
        _put(readers[0], "new", started=NOW, ended=NOW)  # stored the new way beside them
        assert prune(readers[0], 30, now=NOW + 2 * DAY) == Pruned(0, 0)
        assert prune(readers[0], 30, now=NOW + 40 * DAY) == Pruned(2, 0)
    finally:
        for reader in readers:
            reader.close()


@pytest.mark.parametrize(("value", "said"), [
    ("-1", "run_retention_days must be >= 0 (0 = keep runs for ever), got -1"),
    ("1000000", "run_retention_days must be at most 36500 (a hundred years), got 1000000"),
    ("thirty", "SCILLM_RUN_RETENTION_DAYS must be an integer, not 'thirty'"),
    ("1.5", "SCILLM_RUN_RETENTION_DAYS must be an integer, not '1.5'"),
])
def test_a_retention_that_means_nothing_stops_the_start(value: str, said: str) -> None:
    with pytest.raises(ValueError, match=re.escape(said)):
        Settings.from_env(environ={"SCILLM_RUN_RETENTION_DAYS": value})
    out = subprocess.run([SCILLM, "serve", "--grpc-port", "0", "--no-http"], capture_output=True,
                         text=True, timeout=120, check=False,
                         env={**os.environ, "SCILLM_RUN_RETENTION_DAYS": value})
    assert out.returncode == 2 and said in out.stderr and "Traceback" not in out.stderr


def test_retention_is_off_unless_set_and_travels_to_workers() -> None:
    assert Settings.from_env(environ={}).run_retention_days == 0
    assert Settings.from_env(environ={"SCILLM_RUN_RETENTION_DAYS": ""}).run_retention_days == 0
    settings = Settings.from_env(environ={"SCILLM_RUN_RETENTION_DAYS": "30"})
    env = {k: v for k, v in settings.environment().items() if v is not None}
    assert Settings.from_env(environ=env).run_retention_days == 30
    assert "--run-retention-days DAYS" in subprocess.run(
        [SCILLM, "serve", "--help"], capture_output=True, text=True, timeout=60,
        check=False).stdout


def _scillm(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """`scillm runs ARGS` whose machine's store (and agent traces) are in `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCILLM_STORE")}
    env["SCILLM_STORE_PATH"] = str(tmp_path / "runs.sqlite3")
    return subprocess.Popen([SCILLM, "runs", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def test_runs_prune_on_the_command_line(location: str, tmp_path: Path) -> None:
    """`--dry-run` counts; two prunes at once remove every old run once between them."""
    now = time.time()
    store = open_run_store(location)
    try:
        for i in range(60):
            _put(store, f"old-{i}", started=now - 40 * DAY, ended=now - 40 * DAY)
        _put(store, "recent", started=now - DAY, ended=now - DAY)
    finally:
        store.close()
    traces = tmp_path / "agent-traces"  # beside the SQLite store, or this machine's
    traces.mkdir(exist_ok=True)
    (traces / "old.jsonl").write_text("{}\n")
    os.utime(traces / "old.jsonl", (now - 40 * DAY, now - 40 * DAY))
    env_store = ("--store", location)

    dry = _scillm(tmp_path, "prune", "--older-than", "30", "--dry-run", *env_store)
    out, err = dry.communicate(timeout=120)
    assert (dry.returncode, err) == (0, ""), err
    assert out.startswith("would remove 60 runs and 1 agent trace inactive for more than "
                          "30 days"), out

    both = [_scillm(tmp_path, "prune", "--older-than", "30", *env_store) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in both]
    assert [p.returncode for p in both] == [0, 0] and [e for _, e in outs] == ["", ""], outs
    removed = [re.match(r"removed (\d+) runs? and (\d+) agent traces?", o) for o, _ in outs]
    assert all(removed), outs
    assert sum(int(m[1]) for m in removed if m) == 60
    assert sum(int(m[2]) for m in removed if m) == 1 and not any(traces.iterdir())

    listed = subprocess.run([SCILLM, "runs", "list", *env_store], capture_output=True,
                            text=True, timeout=120, check=False)
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["recent"]
    bad = subprocess.run([SCILLM, "runs", "prune", "--older-than", "0", *env_store],
                         capture_output=True, text=True, timeout=60, check=False)
    assert bad.returncode == 2 and "at least 1 day" in bad.stderr
    missing = subprocess.run([SCILLM, "runs", "prune", "--older-than", "30", "--store",
                              str(tmp_path / "none.sqlite3")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert missing.returncode == 1 and "no run store" in missing.stderr


def test_a_serving_mesh_sweeps_its_store(tmp_path: Path) -> None:
    """`scillm serve` with retention sweeps when it starts (and hourly after)."""
    now = time.time()
    store = open_run_store(tmp_path / "runs.sqlite3")
    try:
        _put(store, "old", started=now - 40 * DAY, ended=now - 40 * DAY)
        _put(store, "recent", started=now - DAY, ended=now - DAY)
    finally:
        store.close()
    running = start_mesh(mesh_settings(tmp_path, http_enabled=False, services=("prove",),
                                       run_retention_days=30))
    try:
        store = open_run_store(tmp_path / "runs.sqlite3")
        try:
            deadline = time.monotonic() + 60
            while "old" in _ids(store):
                assert time.monotonic() < deadline, "the old run was never swept"
                time.sleep(0.05)
            assert _ids(store) == {"recent"}
        finally:
            store.close()
    finally:
        running.stop()


def test_runs_prune_refuses_an_age_before_any_run(tmp_path: Path) -> None:
    """`--older-than 99999999999` reached a date before year 1: a traceback."""
    store = str(tmp_path / "runs.sqlite3")
    open_run_store(store).close()
    out = subprocess.run([SCILLM, "runs", "prune", "--store", store, "--older-than",
                          "99999999999"], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 2 and "at most 36500" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert instant(-1e12) == instant(0)  # a cutoff before the epoch: nothing is older
