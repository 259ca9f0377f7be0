"""Two callers claiming run ids at the same moment, each id beginning the other.

A caller's run id is refused when it begins a stored run's id in any ASCII case
(`RunStore.claim`, so that it cannot take over the lookups by that prefix), and an id
equal to a stored one ignoring case begins it. The check and the insert are one
statement; in PostgreSQL a statement does not see what another has not committed yet, so
two claims of `Exp-1` and `exp-1` at once both passed their checks and were both listed:
a pair no order of the two claims gives, and each id then begins the other. Claims now
take turns there (one transaction each, behind a lock only claims take). SQLite takes its
write lock when such a statement starts, before it reads: a claim made while another
writer holds it waits, then sees what that writer stored.

Each race is made to happen, not hoped for: the first claim is held inside its insert (a
trigger waiting on a lock this test holds; in SQLite, an open write transaction) while
the second is made.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import empty_pb2
from test_run_store_pg import pg_server, pg_url  # noqa: F401  (fixtures)

from scillm.agent.v1 import agent_pb2 as apb
from scillm.common.v1 import common_pb2
from scillm.server.manifests import PostgresRunStore, SQLiteRunStore, open_run_store

#: The advisory lock this test holds to keep the first claim inside its insert.
_HOLD = 4242


def _started(run_id: str) -> common_pb2.RunManifest:
    manifest = common_pb2.RunManifest(run_id=run_id, service="agent")
    manifest.start_time.FromSeconds(1_700_000_000)
    return manifest


async def _until(done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60  # against a hang, not a measure of anything
    while not done():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


@pytest.fixture
def two_pg_stores(pg_url: str) -> Iterator[tuple[PostgresRunStore, PostgresRunStore]]:  # noqa: F811
    """Two stores on one PostgreSQL database, as two serving processes have."""
    first, second = open_run_store(pg_url), open_run_store(pg_url)
    assert isinstance(first, PostgresRunStore) and isinstance(second, PostgresRunStore)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


async def test_postgresql_claims_of_one_id_in_two_cases_at_once_list_one(
        pg_url: str, two_pg_stores: tuple[PostgresRunStore, PostgresRunStore],  # noqa: F811
) -> None:
    import psycopg

    first, second = two_pg_stores
    request = apb.AgentRunRequest()
    with psycopg.connect(pg_url, autocommit=True) as admin, \
            psycopg.connect(pg_url, autocommit=True) as holder:
        admin.execute(
            "CREATE FUNCTION hold_exp() RETURNS trigger AS $$ BEGIN "
            f"IF NEW.run_id = 'Exp-1' THEN PERFORM pg_advisory_lock({_HOLD}); "
            f"PERFORM pg_advisory_unlock({_HOLD}); END IF; RETURN NEW; END $$ LANGUAGE plpgsql")
        admin.execute("CREATE TRIGGER hold_exp BEFORE INSERT ON runs FOR EACH ROW "
                      "EXECUTE FUNCTION hold_exp()")

        def waiting() -> int:
            row = admin.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
            return int(row[0]) if row else 0

        holder.execute("SELECT pg_advisory_lock(%s)", (_HOLD,))
        one = asyncio.ensure_future(first.claim(_started("Exp-1"), request))
        await _until(lambda: waiting() == 1, "the first claim never reached its insert")
        other = asyncio.ensure_future(second.claim(_started("exp-1"), request))
        # The second claim has either ended (taken: the race) or waits for the first.
        await _until(lambda: other.done() or waiting() == 2, "the second claim hung")
        holder.execute("SELECT pg_advisory_unlock(%s)", (_HOLD,))
        claimed = await asyncio.gather(one, other)
    assert claimed == [True, False]
    assert [m.run_id for m in first.list()] == ["Exp-1"]
    # Claims taking turns keep the rule: an id a stored one extends may be taken after it.
    assert await first.claim(_started("exp-2"), request)
    assert await second.claim(_started("exp-20"), request)
    assert not await second.claim(_started("EXP-2"), request)


async def test_sqlite_claim_made_while_another_writes_sees_what_it_stored(
        tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite3"
    first, second = SQLiteRunStore(path), SQLiteRunStore(path)
    request = apb.AgentRunRequest()
    began = threading.Event()
    try:
        second._db.set_trace_callback(
            lambda sql: began.set() if sql.lstrip().upper().startswith("INSERT") else None)
        # The first writer has stored `Exp-1` and not committed yet.
        first._db.execute("BEGIN IMMEDIATE")
        first._db.execute(first._UPSERT, first._row(_started("Exp-1"), request,
                                                    empty_pb2.Empty(), ()))
        other = asyncio.ensure_future(second.claim(_started("exp-1"), request))
        assert await asyncio.to_thread(began.wait, 60), "the claim never ran"
        first._db.commit()
        assert await other is False
        second._db.set_trace_callback(None)
        assert [m.run_id for m in second.list()] == ["Exp-1"]
    finally:
        first.close()
        second.close()
