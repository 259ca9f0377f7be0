"""A caller's own run id cannot take over the lookups of another run by its prefix.

A run is looked up by its id or a unique prefix of it, the exact id first. A caller (any
key that may run an agent) could name its run after the first 8 characters of another
key's run id: `GET /ui/api/runs/<those 8>` and `scillm runs show <those 8>` then gave the
caller's run, not the one whose id they begin. The store now refuses a caller's run id
that begins a stored run's id (ALREADY_EXISTS, naming `context.run_id`), in any case, so
those characters still name the one run; exact ids keep working, an id that a later run's
id extends included. Through a real mesh: AgentRun and Completion over gRPC, the runs
UI's JSON and `scillm runs show`; and the store's claim itself, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh
from test_run_store_pg import pg_server, pg_url  # noqa: F401  (fixtures)

from scillm.agent.v1 import agent_pb2 as apb
from scillm.bridges.cli.runs import show_run
from scillm.clients import RPCError, ScillmClient, openai_wire
from scillm.common.v1 import common_pb2
from scillm.completion.v1 import completion_pb2 as cpb
from scillm.server.manifests import open_run_store


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[RunningMesh]:
    """Agent and Completion (`echo/...`), every run kept."""
    running = start_mesh(mesh_settings(tmp_path, services=("completion", "agent"),
                                       store_completions=True))
    yield running
    running.stop()


def _agent(run_id: str = "") -> apb.AgentRunRequest:
    request = apb.AgentRunRequest(config=apb.AgentConfig(model="echo/x"))
    request.messages.add(role=cpb.ROLE_USER, content=[cpb.ContentPart(text="hi")])
    request.context.run_id = run_id
    return request


def _completion(run_id: str, text: str = "hi") -> cpb.CompletionRequest:
    request = openai_wire.request_to_proto(
        {"model": "echo/x", "messages": [{"role": "user", "content": text}]})
    request.context.run_id = run_id
    return request


async def _agent_run(client: ScillmClient, run_id: str = "") -> str:
    events = [e async for e in client.agent.run(_agent(run_id))]
    assert events[-1].HasField("final"), events[-1]
    return str(events[-1].final.manifest.run_id)


async def _looked_up(mesh: RunningMesh, key: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as http:
        reply = await http.get(f"{mesh.http_url}/ui/api/runs/{key}")
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = reply.json()
    return found


async def test_a_callers_run_id_cannot_take_over_a_prefix_of_another_runs_id(
        runs: RunningMesh, capsys: pytest.CaptureFixture[str]) -> None:
    async with ScillmClient(runs.grpc_target) as client:
        original = await _agent_run(client)
        assert len(original) == 32
        for taken in (original[:8], original[:8].upper(), original[:1]):
            with pytest.raises(RPCError) as raised:
                await _agent_run(client, taken)
            assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS, taken
            assert raised.value.param == "context.run_id"
            assert "begins the id of a stored run" in raised.value.message
        # A completion's caller-chosen id is claimed as an agent's is (it replaced a
        # stored run of that id before, and could begin one).
        for taken in (original, original[:8]):
            with pytest.raises(RPCError) as raised:
                await client.completion.create(_completion(taken))
            assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS, taken
    # The prefix still names the original run, in the UI and the CLI.
    assert (await _looked_up(runs, original[:8]))["manifest"]["run_id"] == original
    assert (await _looked_up(runs, original))["request"]["config"]["model"] == "echo/x"
    assert show_run(runs.mesh.settings.store_path, original[:8]) == 0
    assert json.loads(capsys.readouterr().out)["manifest"]["run_id"] == original


async def test_exact_ids_stay_reachable_beside_ids_they_begin(runs: RunningMesh) -> None:
    base = f"exp-{uuid.uuid4().hex[:8]}"
    async with ScillmClient(runs.grpc_target) as client:
        short = await _agent_run(client, base)
        longer = await _agent_run(client, f"{base}0")  # extends a stored id: allowed
        assert (short, longer) == (base, f"{base}0")
        reply = await client.completion.create(_completion(f"{base}1", "one"))
        assert reply.manifest.run_id == f"{base}1"
        with pytest.raises(RPCError) as raised:  # the same id again: never replaced
            await client.completion.create(_completion(f"{base}1", "two"))
        assert raised.value.code == grpc.StatusCode.ALREADY_EXISTS
        assert "already stored" in raised.value.message
    assert (await _looked_up(runs, base))["manifest"]["run_id"] == base
    assert (await _looked_up(runs, f"{base}0"))["manifest"]["run_id"] == f"{base}0"
    kept = await _looked_up(runs, f"{base}1")
    assert kept["result"]["choices"][0]["message"]["content"][0]["text"] == "one"


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file, or a PostgreSQL database (the claim is one statement in each)."""
    if request.param == "sqlite":
        return str(tmp_path / "runs.sqlite3")
    return str(request.getfixturevalue("pg_url"))


async def test_the_store_refuses_a_claimed_id_that_begins_a_stored_one(location: str) -> None:
    def started(run_id: str) -> common_pb2.RunManifest:
        manifest = common_pb2.RunManifest(run_id=run_id, service="agent")
        manifest.start_time.FromSeconds(1_700_000_000)
        return manifest

    request = apb.AgentRunRequest()
    store = open_run_store(location)
    try:
        await store.started(started("af6c1234deadbeef"), request)
        refused = ["af6c1234", "AF6C", "af6c1234deadbeef", "a"]
        assert [await store.claim(started(i), request) for i in refused] == [False] * 4
        # LIKE's wildcards in an id are themselves: "a_c" begins no "abc...".
        taken = ["af6c1234deadbeef0", "a_c", "abc", "a%", "x.y:z"]
        assert [await store.claim(started(i), request) for i in taken] == [True] * 5
        assert {m.run_id for m in store.list()} == {"af6c1234deadbeef", *taken}
        run = store.get("af6c1234")  # a prefix of two ids now: "...beef" and "...beef0"
        assert run is None
        exact = store.get("af6c1234deadbeef")
        assert exact is not None and exact.manifest.run_id == "af6c1234deadbeef"
    finally:
        store.close()
