"""`recording`: the one way a run is kept while it runs, for every service.

Completion kept its calls its own way (a `kept` flag and an `except` in each of its five
handlers) beside `recording`, which Prove, CodeWorld and the agent use; each had what the
other lacked. Now both are `recording`'s:

- a run ended by an error is kept `failed`, with the `google.rpc.Status` its caller was
  sent, where the service gives its error table (Completion does); without one it reads
  `interrupted`, as before;
- a run ended by the server's own deadline is `failed` with DEADLINE_EXCEEDED, not
  `interrupted` as if its caller had left;
- a run may be stored only when it ends (`listed=False`: Completion's calls, which are
  short and many), a caller's own run id still claimed when it starts;
- a store that cannot keep a run that ended without its result no longer replaces the
  error the caller is sent with its own (it is logged), and the write no longer blocks the
  event loop.

On a real SQLite store (and PostgreSQL where the fixture runs), with the real `Deadline`
the server's interceptor sets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from google.rpc import status_pb2

from scillm.common.v1 import common_pb2
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.deadline import Deadline
from scillm.server.errors import BASE_TABLE, StatusError
from scillm.server.manifests import (
    ManifestClock,
    RunStore,
    RunStoreUnavailable,
    SQLiteRunStore,
    recording,
    run_state,
)


def _clock(run_id: str = "") -> ManifestClock:
    return ManifestClock("prove", common_pb2.RunContext(run_id=run_id), request_id="req")


def _request() -> pb.ProveRequest:
    return pb.ProveRequest(items=[pb.Obligation(item_id="i", statement="x")])


def _state(store: RunStore, run_id: str) -> str:
    run = store.get(run_id)
    assert run is not None, run_id
    return run_state(run.manifest, run.result)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteRunStore]:
    opened = SQLiteRunStore(tmp_path / "runs.sqlite3")
    yield opened
    opened.close()


async def test_an_error_is_kept_failed_with_a_table_and_interrupted_without(
        store: SQLiteRunStore) -> None:
    kept, plain = _clock(), _clock()
    for clock, errors in ((kept, BASE_TABLE), (plain, None)):
        with pytest.raises(StatusError):
            async with recording(store, clock, _request(), errors=errors) as record:
                assert _state(store, clock.manifest.run_id) == "running"
                record.events.append(pb.ProveResponse())
                raise StatusError(grpc.StatusCode.NOT_FOUND, "no such backend")
    failed = store.get(kept.manifest.run_id)
    assert failed is not None and run_state(failed.manifest, failed.result) == "failed"
    assert failed.result == status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0],
                                              message="no such backend")
    assert len(failed.events) == 1 and failed.manifest.HasField("end_time")
    interrupted = store.get(plain.manifest.run_id)
    assert interrupted is not None and interrupted.result == empty_pb2.Empty()
    assert run_state(interrupted.manifest, interrupted.result) == "interrupted"


async def test_a_caller_who_leaves_is_interrupted_a_deadline_that_passes_is_failed(
        store: SQLiteRunStore) -> None:
    left, late = _clock(), _clock()
    inside = asyncio.Event()
    task = asyncio.ensure_future(_run_until_cancelled(store, left, inside))
    await inside.wait()
    task.cancel()  # as gRPC cancels the handler of a caller who left
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _state(store, left.manifest.run_id) == "interrupted"
    # As the server's interceptor bounds a call that carries no deadline of its own.
    with pytest.raises(TimeoutError):
        async with Deadline(0.05):
            await _run_until_cancelled(store, late, asyncio.Event())
    run = store.get(late.manifest.run_id)
    assert run is not None and run_state(run.manifest, run.result) == "failed"
    assert run.result.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]  # type: ignore[attr-defined]


async def _run_until_cancelled(store: RunStore, clock: ManifestClock,
                               inside: asyncio.Event) -> None:
    async with recording(store, clock, _request(), errors=BASE_TABLE):
        inside.set()
        await asyncio.sleep(60)


async def test_a_run_not_listed_is_stored_only_when_it_ends(store: SQLiteRunStore) -> None:
    clock, chosen = _clock(), _clock("mine-1")
    async with recording(store, clock, _request(), listed=False) as record:
        assert store.get(clock.manifest.run_id) is None  # nothing written as it starts
        await record.put(clock.finish(), pb.ProveSummary(items=1))
    assert _state(store, clock.manifest.run_id) == "done"
    with pytest.raises(StatusError):
        async with recording(store, chosen, _request(), listed=False, errors=BASE_TABLE):
            assert _state(store, "mine-1") == "running"  # a chosen id is claimed at once
            raise StatusError(grpc.StatusCode.INVALID_ARGUMENT, "bad")
    assert _state(store, "mine-1") == "failed"
    with pytest.raises(StatusError) as taken:
        async with recording(store, _clock("mine-1"), _request(), listed=False):
            pass
    assert taken.value.code == grpc.StatusCode.ALREADY_EXISTS


async def test_a_store_that_cannot_keep_the_end_leaves_the_callers_error(
        store: SQLiteRunStore, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="scillm.server")
    clock = _clock()
    with pytest.raises(StatusError) as raised:
        async with recording(store, clock, _request(), errors=BASE_TABLE):
            store._db.execute("PRAGMA query_only = ON")  # the store cannot write now
            raise StatusError(grpc.StatusCode.NOT_FOUND, "no such backend")
    assert raised.value.code == grpc.StatusCode.NOT_FOUND  # not the store's UNAVAILABLE
    said = [r.getMessage() for r in caplog.records]
    assert any(clock.manifest.run_id in s and "could not be stored" in s for s in said), said
    store._db.execute("PRAGMA query_only = OFF")
    assert _state(store, clock.manifest.run_id) == "running"  # its row as it started
    # The end it could not keep is the caller's to know when the run had a result.
    clock = _clock()
    with pytest.raises(RunStoreUnavailable):
        async with recording(store, clock, _request()) as record:
            store._db.execute("PRAGMA query_only = ON")
            await record.put(clock.finish(), pb.ProveSummary(items=1))
    store._db.execute("PRAGMA query_only = OFF")
