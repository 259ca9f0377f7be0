"""Sessions are their caller's own: with keys on, a virtual key naming another key's
session_id and track reads none of its history and moves none of its plateau signal.

The session store was keyed by (session_id, track) alone: a key that named another's
session read its run count and means in every summary, and recorded its own runs into
that history (so it could make another caller's track plateau, or never plateau). Now a
virtual key's sessions are stored under its key_id; the master key, and every caller
when keys are off, keep the unscoped sessions as before. The session_id a caller sees
in its summary and manifest is the one it sent.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient
from scillm.codeworld.v1 import codeworld_pb2 as cw
from scillm.keys.v1 import keys_pb2

MASTER = "sk-master-sessions"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMesh]:
    """A mesh with keys on (Completion serves the KeyService keys are made with)."""
    running = start_mesh(mesh_settings(tmp_path_factory.mktemp("sessions"),
                                       services=("completion", "codeworld"),
                                       http_enabled=False, master_key=MASTER))
    yield running
    running.stop()


def _request(session_id: str, mean: float) -> cw.CodeWorldRunRequest:
    """One run whose mean aggregate is `mean` (a scorer of one metric, weighted 1)."""
    req = cw.CodeWorldRunRequest()
    req.context.session_id, req.context.track = session_id, "t"
    req.items.add(task_id="one")
    req.strategies.add(name="s", source="def solve(task, context):\n    return 1\n")
    req.scoring.score_source = (f"def score(task, context, outputs, timings):\n"
                                f"    return {{'m': {mean}}}\n")
    return req


async def _summary(target: str, key: str | None,
                   req: cw.CodeWorldRunRequest) -> cw.CodeWorldRunSummary:
    async with ScillmClient(target, api_key=key) as client:
        events = [e async for e in client.codeworld.run(req)]
    assert events[-1].HasField("summary")
    return events[-1].summary


async def _key(target: str, alias: str) -> str:
    async with ScillmClient(target, api_key=MASTER) as admin:
        made = await admin.keys.generate(keys_pb2.GenerateKeyRequest(key_alias=alias))
    return made.key


async def test_a_key_does_not_read_or_move_another_keys_session(keyed: RunningMesh) -> None:
    target = keyed.grpc_target
    a, b = await _key(target, "a"), await _key(target, "b")
    first = [await _summary(target, a, _request("shared", 0.5)) for _ in range(2)]
    assert [s.session.runs for s in first] == [1, 2]
    intruder = await _summary(target, b, _request("shared", 0.9))
    # B's own session: its first run, with no earlier mean to compare to.
    assert intruder.session.runs == 1 and intruder.session.previous_mean == 0.0
    # What B sees and what its manifest stores is the session_id it sent.
    assert intruder.session.session_id == "shared" and intruder.session.track == "t"
    assert intruder.manifest.session_id == "shared"
    # A's history holds none of B's run: its third run follows its own two means.
    third = await _summary(target, a, _request("shared", 0.5))
    assert third.session.runs == 3 and third.session.previous_mean == pytest.approx(0.5)
    assert third.session.session_id == "shared" and third.manifest.session_id == "shared"


async def test_the_master_key_keeps_its_own_sessions(keyed: RunningMesh) -> None:
    """The master key is an owner of its own: it keeps the unscoped sessions (those that
    were recorded with keys off), which no virtual key reaches."""
    target = keyed.grpc_target
    key = await _key(target, "c")
    assert (await _summary(target, MASTER, _request("admin", 0.5))).session.runs == 1
    assert (await _summary(target, key, _request("admin", 0.9))).session.runs == 1
    again = await _summary(target, MASTER, _request("admin", 0.5))
    assert again.session.runs == 2 and again.session.previous_mean == pytest.approx(0.5)


async def test_with_keys_off_every_caller_shares_a_session_as_before(
        mesh: RunningMesh) -> None:
    """No keys, no callers to tell apart: one session_id is one history, as it was."""
    runs = [(await _summary(mesh.grpc_target, None, _request("keys-off", 0.5))).session.runs
            for _ in range(2)]
    assert runs == [1, 2]


async def test_the_sqlite_store_keeps_each_owners_track_apart(tmp_path: Path) -> None:
    from scillm.server.codeworld._sessions import SessionStore

    store = SessionStore(str(tmp_path / "sessions.sqlite"), window=2)
    store.open()
    try:
        mine = [await store.record("s", "t", v, owner="key-a") for v in (0.5, 0.5)]
        theirs = await store.record("s", "t", 0.9, owner="key-b")
        unscoped = await store.record("s", "t", 0.1)
        again = await store.record("s", "t", 0.5, owner="key-a")
    finally:
        store.close()
    assert [i.index for i in (*mine, theirs, unscoped, again)] == [0, 1, 0, 0, 2]
    assert theirs.previous_mean is None and unscoped.previous_mean is None
    assert again.previous_mean == pytest.approx(0.5) and again.session_id == "s"


async def test_a_session_file_written_before_keeps_its_unscoped_history(
        tmp_path: Path) -> None:
    """The unscoped sessions stay in the table they were always in: a file written before
    sessions had owners goes on where it was, with nothing to migrate."""
    from scillm.server.codeworld._sessions import SessionStore

    path = tmp_path / "sessions.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE codeworld_runs (session_id TEXT NOT NULL, track TEXT NOT "
                   "NULL, idx INTEGER NOT NULL, mean_aggregate REAL NOT NULL, created REAL "
                   "NOT NULL, PRIMARY KEY (session_id, track, idx))")
        db.executemany("INSERT INTO codeworld_runs VALUES (?, ?, ?, ?, 0)",
                       [("old", "t", 0, 0.2), ("old", "t", 1, 0.4)])
        db.commit()
    store = SessionStore(str(path), window=2)
    store.open()
    try:
        unscoped = await store.record("old", "t", 0.6)
        owned = await store.record("old", "t", 0.6, owner="key-a")
    finally:
        store.close()
    assert unscoped.index == 2 and unscoped.previous_mean == pytest.approx(0.3)
    assert owned.index == 0 and owned.previous_mean is None


async def test_the_redis_store_keeps_each_owners_track_apart(redis_port: int) -> None:
    from scillm.server.codeworld._sessions import RedisSessionStore, session_key

    store = RedisSessionStore(f"redis://127.0.0.1:{redis_port}/1", window=2)
    store.open()
    mine = [await store.record("r-s", "t", v, owner="key-a") for v in (0.5, 0.5)]
    theirs = await store.record("r-s", "t", 0.9, owner="key-b")
    unscoped = await store.record("r-s", "t", 0.1)
    again = await store.record("r-s", "t", 0.5, owner="key-a")
    assert [i.index for i in (*mine, theirs, unscoped, again)] == [0, 1, 0, 0, 2]
    assert again.previous_mean == pytest.approx(0.5) and again.session_id == "r-s"
    # Unscoped names kept as they were; no unscoped pair names an owned list.
    assert session_key("s", "t") == "scillm:codeworld:s:t"
    owned = session_key("s", "t", "key-a")
    assert owned == 'scillm:codeworld:owned:json:["key-a", "s", "t"]'
    for session_id, track in (("owned", 'json:["key-a", "s", "t"]'),
                              ("owned:json", '["key-a", "s", "t"]')):
        assert session_key(session_id, track) != owned
    assert session_key("s", "t", "a:b") != session_key("b:s", "t", "a")
