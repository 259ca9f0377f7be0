"""Runs are listed while they stream, and a run that ends without its result says so:
through a real mesh, its run store, the runs UI and replay."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from meshutil import RunningMesh

from scillm.clients import ScillmClient
from scillm.prove.v1 import prove_pb2 as pb
from scillm.server.manifests import RunStore, StoredRun, open_run_store, replay, run_state

#: Nonlinear and hard for z3: runs until the item's time limit.
HARD = ("(forall ((a Int) (b Int) (c Int)) (=> (and (> a 0) (> b 0) (> c 0)) "
        "(not (= (+ (* a a a) (* b b b)) (* c c c)))))")


def _slow_batch(session: str, seconds: int) -> pb.ProveRequest:
    request = pb.ProveRequest(no_cache=True, items=[
        pb.Obligation(item_id="hard", backend=pb.BACKEND_SMT, statement=HARD)])
    request.limits.timeout.FromSeconds(seconds)
    request.context.session_id = session
    return request


async def _wait_for(store: RunStore, session: str, wanted: Callable[[StoredRun], bool],
                    seconds: float = 60) -> StoredRun:
    """The session's one run once `wanted` holds of it (polled on a thread)."""
    deadline = time.monotonic() + seconds
    while True:
        found = await asyncio.to_thread(store.list, session_id=session)
        if found:
            run = await asyncio.to_thread(store.get, found[0].run_id)
            if run is not None and wanted(run):
                return run
        assert time.monotonic() < deadline, f"no run of {session} became what was wanted"
        await asyncio.sleep(0.05)


def _state(run: StoredRun) -> str:
    return run_state(run.manifest, run.result)


async def test_a_streaming_run_is_listed_as_running_then_done(mesh: RunningMesh) -> None:
    session = f"inflight-{uuid.uuid4().hex[:8]}"
    store = open_run_store(mesh.mesh.settings)
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            events = client.prove.prove(_slow_batch(session, 4))
            consumer = asyncio.ensure_future(asyncio.wait_for(_drain(events), 120))
            running = await _wait_for(store, session, lambda r: _state(r) == "running")
            assert not consumer.done()  # seen while the batch still streams
            assert running.manifest.service == "prove" and not running.manifest.end_time.seconds
            async with httpx.AsyncClient(timeout=10) as http:
                rows = await http.get(f"{mesh.http_url}/ui/rows",
                                      params={"session_id": session})
            assert rows.status_code == 200 and "running" in rows.text, rows.text[:500]
            with pytest.raises(ValueError, match="running"):
                await replay(running, client)
            await consumer
        done = await _wait_for(store, session, lambda r: _state(r) == "done")
        assert isinstance(done.result, pb.ProveSummary) and done.result.items == 1
    finally:
        store.close()


async def test_a_run_whose_caller_hangs_up_is_kept_as_interrupted(mesh: RunningMesh) -> None:
    session = f"hangup-{uuid.uuid4().hex[:8]}"
    store = open_run_store(mesh.mesh.settings)
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            consumer = asyncio.ensure_future(_drain(client.prove.prove(_slow_batch(session, 60))))
            await _wait_for(store, session, lambda r: _state(r) == "running")
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        interrupted = await _wait_for(store, session, lambda r: _state(r) == "interrupted")
        assert interrupted.manifest.HasField("end_time")
    finally:
        store.close()


async def _drain(events: object) -> None:
    async for _ in events:  # type: ignore[attr-defined]
        pass


async def test_a_callers_run_id_names_a_new_run_and_never_replaces_one(
        mesh: RunningMesh) -> None:
    import grpc

    from scillm.clients import RPCError

    def batch(run_id: str, statement: str) -> pb.ProveRequest:
        request = pb.ProveRequest(no_cache=True, items=[
            pb.Obligation(item_id="i", backend=pb.BACKEND_SMT, statement=statement)])
        request.context.run_id = run_id
        return request

    run_id = f"chosen-{uuid.uuid4().hex}"
    store = open_run_store(mesh.mesh.settings)
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            first = [e async for e in client.prove.prove(batch(run_id, "(> 2 1)"))]
            assert first[-1].summary.manifest.run_id == run_id
            with pytest.raises(RPCError) as raised:
                [e async for e in client.prove.prove(batch(run_id, "(> 1 2)"))]
        assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert raised.value.param == "context.run_id"
        kept = await asyncio.to_thread(store.get, run_id)
        assert kept is not None and kept.result.proved == 1  # type: ignore[attr-defined]
    finally:
        store.close()


@pytest.mark.parametrize(("field", "value"), [
    ("run_id", "../../x"), ("run_id", "a b"), ("run_id", "x" * 129), ("run_id", "-x"),
    ("session_id", "s" * 257), ("session_id", "a\nb"), ("track", "t\x00"),
    ("labels", {"k": "v" * 513}), ("labels", {"": "v"}),
    ("labels", {f"k{i}": "v" for i in range(17)}),
])
async def test_a_run_context_the_store_cannot_take_is_refused_by_every_service(
        mesh: RunningMesh, field: str, value: object) -> None:
    """A run id names files and store rows; session, track and labels are stored with
    every run. Each service refuses one it cannot take as it is, naming the field."""
    import grpc

    from scillm.clients import RPCError, openai_wire
    from scillm.codeworld.v1 import codeworld_pb2 as cw
    from scillm.common.v1 import common_pb2

    context = common_pb2.RunContext()
    if isinstance(value, dict):
        context.labels.update(value)
    else:
        setattr(context, field, value)
    completion = openai_wire.request_to_proto(
        {"model": "echo/x", "messages": [{"role": "user", "content": "hi"}]})
    completion.context.CopyFrom(context)
    prove = pb.ProveRequest(items=[pb.Obligation(item_id="i", backend=pb.BACKEND_SMT,
                                                 statement="(> 2 1)")], context=context)
    codeworld = cw.CodeWorldRunRequest(
        items=[cw.Task(task_id="t")], context=context,
        strategies=[cw.Strategy(name="s", language=cw.LANGUAGE_PYTHON,
                                source="def solve(context):\n    return 1\n")])
    async with ScillmClient(mesh.grpc_target) as client:
        for call in (lambda: client.completion.create(completion),
                     lambda: _drain(client.prove.prove(prove)),
                     lambda: _drain(client.codeworld.run(codeworld))):
            with pytest.raises(RPCError) as raised:
                await call()
            assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert raised.value.param == f"context.{field}"


async def _drain(events: object) -> list[object]:
    return [e async for e in events]  # type: ignore[attr-defined]


async def test_an_interrupted_agent_run_keeps_its_events(mesh: RunningMesh) -> None:
    """An agent run whose caller hung up was kept as interrupted with none of its events:
    the model turns and tool calls it had made (and paid for) were lost. They are kept."""
    from scillm.agent.v1 import agent_pb2 as apb
    from scillm.completion.v1 import completion_pb2 as cpb

    session = f"agent-hangup-{uuid.uuid4().hex[:8]}"
    request = apb.AgentRunRequest(config=apb.AgentConfig(
        model="echo/x", auto_run_code=True, languages=["python"]))
    request.messages.add(role=cpb.ROLE_USER, content=[cpb.ContentPart(
        text="```python\nimport time\ntime.sleep(120)\n```")])
    request.context.session_id = session
    store = open_run_store(mesh.mesh.settings)
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            events = client.agent.run(request)
            seen = [await anext(events), await anext(events)]  # the turn, the tool call
            assert seen[0].HasField("model_turn") and seen[1].HasField("tool_call"), seen
            await events.aclose()  # the caller hangs up while the code runs
        interrupted = await _wait_for(store, session, lambda r: _state(r) == "interrupted")
        kinds = [next(iter(event)) for event in interrupted.events]
        assert kinds == ["model_turn", "tool_call"], interrupted.events
    finally:
        store.close()


async def test_an_interrupted_batch_keeps_the_results_it_had(mesh: RunningMesh) -> None:
    """A Prove batch whose caller hung up after its first result kept none of them."""
    session = f"prove-hangup-{uuid.uuid4().hex[:8]}"
    request = _slow_batch(session, 60)
    request.items.insert(0, pb.Obligation(item_id="easy", backend=pb.BACKEND_SMT,
                                          statement="(> 2 1)"))
    store = open_run_store(mesh.mesh.settings)
    try:
        async with ScillmClient(mesh.grpc_target) as client:
            events = client.prove.prove(request)
            first = await anext(events)
            assert first.result.item_id == "easy", first
            await events.aclose()
        interrupted = await _wait_for(store, session, lambda r: _state(r) == "interrupted")
        assert [e.get("item_id") for e in interrupted.events] == ["easy"], interrupted.events
    finally:
        store.close()
