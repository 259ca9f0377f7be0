"""Through a real mesh (gRPC AgentRun and the OpenAI door): tool servers that do not answer,
and runs whose model the caller named wrongly.

The mesh's agent has four tool servers: the stdio MCP test server (`demo`) and a real HTTP
tool server (`live`), which answer, and an HTTP MCP server (`ghost`) and an HTTP tool
server (`lab`) on ports where nothing listens. A scripted upstream plays model `weak`.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from http_tools_server import HttpToolServer
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.agent.v1 import agent_pb2
from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as cpb

HERE = Path(__file__).parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mesh:
    def __init__(self, running: RunningMesh, upstream: ScriptedUpstream,
                 closed: tuple[int, int]) -> None:
        self.running, self.upstream = running, upstream
        #: The ports of `ghost` and `lab`, which the caller must never read.
        self.closed = closed

    def script(self, *replies: dict[str, Any]) -> None:
        self.upstream.replies = list(replies)
        self.upstream._index = 0
        self.upstream.requests.clear()

    def offered(self) -> set[str]:
        """The tools the first model call was offered."""
        return {t["function"]["name"] for t in self.upstream.requests[0].get("tools", ())}

    def door(self, **body: Any) -> httpx.Response:
        return httpx.post(f"{self.running.http_url}/v1/chat/completions", timeout=60, json={
            "model": "agent/weak", "messages": [{"role": "user", "content": "2+40?"}], **body})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    upstream = ScriptedUpstream([{"content": "unused"}]).start()
    live = HttpToolServer().start()
    ghost, lab = _closed_port(), _closed_port()
    tmp = tmp_path_factory.mktemp("tools-down")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "weak", "litellm_params": {
            "model": "openai/weak", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False},
        "mcp_servers": {"demo": {"command": sys.executable,
                                 "args": [str(HERE / "mcp_server.py"), "stdio"]},
                        "ghost": {"url": f"http://127.0.0.1:{ghost}/mcp"}},
        "http_tool_servers": {"lab": {"url": f"http://127.0.0.1:{lab}"},
                              "live": {"url": live.url}}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "agent")))
    yield Mesh(running, upstream, (ghost, lab))
    running.stop()
    live.stop()
    upstream.stop()


def _request(model: str = "weak", **config: Any) -> agent_pb2.AgentRunRequest:
    return agent_pb2.AgentRunRequest(
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text="2+40?")])],
        config=agent_pb2.AgentConfig(model=model, max_iterations=3, **config))


async def _run(mesh: Mesh, request: agent_pb2.AgentRunRequest) -> list[Any]:
    async with ScillmClient(mesh.running.grpc_target) as client:
        return [e async for e in client.agent.run(request)]


def _add(server: str) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": f"{server}__add", "arguments": json.dumps({"a": 2, "b": 40})}}]}


async def test_servers_that_do_not_answer_are_skipped_and_noted(mesh: Mesh) -> None:
    """One HTTP tool server down failed every tool-using run, 503 "HTTP tool server 'lab'
    is unreachable"; an MCP server down was skipped. Both are skipped, noted (by name) in
    the run's trace; the tools of the servers that answer are offered and called."""
    mesh.script(_add("live"), _add("demo"), {"content": "42"})
    events = await _run(mesh, _request(trace=True))
    final = events[-1].final
    assert final.stop_reason == agent_pb2.STOP_REASON_SUCCESS and final.answer == "42", final
    outputs = [e.tool_result.result for e in events if e.HasField("tool_result")]
    assert [(r.name, r.output, r.is_error) for r in outputs] == [
        ("live__add", "42", False), ("demo__add", "42", False)]
    offered = mesh.offered()
    assert {"live__add", "demo__add"} <= offered
    assert not any(name.startswith(("lab__", "ghost__")) for name in offered), offered
    trace = await asyncio.to_thread(Path(final.trace_path).read_text)
    lines = [json.loads(line) for line in trace.splitlines()]
    skipped = lines[-1]["skipped_tool_servers"]
    assert sorted(skipped) == ["ghost", "lab"], lines[-1]
    assert "'lab' is unreachable" in skipped["lab"], skipped
    assert "'ghost' is unreachable" in skipped["ghost"], skipped
    for port in mesh.closed:
        assert str(port) not in json.dumps(lines), lines


def test_the_door_runs_past_servers_that_do_not_answer(mesh: Mesh) -> None:
    """The reviewer's requests: `"http_tool_servers": []`, and `"mcp_servers": ["demo"]`,
    were 503 while `lab` was down."""
    for body in ({"http_tool_servers": []}, {"mcp_servers": ["demo"]}):
        mesh.script({"content": "42"})
        reply = mesh.door(**body)
        assert reply.status_code == 200, reply.text
        assert reply.json()["choices"][0]["message"]["content"] == "42"


@pytest.mark.parametrize(("body", "server"), [
    ({"mcp_servers": ["ghost"]}, "MCP server 'ghost'"),
    ({"http_tool_servers": ["lab"]}, "HTTP tool server 'lab'")])
def test_a_server_the_run_named_fails_it_naming_the_server(mesh: Mesh, body: dict[str, Any],
                                                           server: str) -> None:
    """Named, a server that does not answer is the run's failure: 503 naming it (before, a
    named MCP server that was skipped at start was left out without a word)."""
    mesh.script({"content": "42"})
    reply = mesh.door(**body)
    assert reply.status_code == 503, reply.text
    message = reply.json()["error"]["message"]
    assert server in message and "unreachable" in message, message
    for port in mesh.closed:
        assert str(port) not in reply.text, reply.text
    assert mesh.upstream.requests == []  # refused before any model call


async def test_an_unknown_model_is_the_runs_status_not_its_answer(mesh: Mesh) -> None:
    """`agent/nosuch` answered 200 "The agent run failed: ... NOT_FOUND: model 'nosuch' is
    not configured": AgentRun answers the model call's own code, as AgentStep does, and
    the door 404 `model_not_found` as for a plain unknown model."""
    with pytest.raises(RPCError) as info:
        await _run(mesh, _request("nosuch"))
    assert info.value.code == grpc.StatusCode.NOT_FOUND, info.value
    assert info.value.reason == "ModelNotFound" and "nosuch" in info.value.message
    with pytest.raises(RPCError) as unnamed:
        await _run(mesh, _request(""))
    assert unnamed.value.code == grpc.StatusCode.INVALID_ARGUMENT, unnamed.value
    async with httpx.AsyncClient(timeout=60) as http:
        reply = await http.post(f"{mesh.running.http_url}/v1/chat/completions", json={
            "model": "agent/nosuch", "messages": [{"role": "user", "content": "hi"}]})
    assert reply.status_code == 404, reply.text
    error = reply.json()["error"]
    assert error["code"] == "model_not_found" and "nosuch" in error["message"], error


async def test_a_wrong_model_after_the_run_streamed_is_its_final_event(mesh: Mesh) -> None:
    """Once a turn has streamed, the run's end says what failed: an escalation model that
    is not configured ends the run in error, its turns kept."""
    mesh.script({"content": "I give up."})
    events = await _run(mesh, _request(escalation_model="nosuch"))
    assert events[0].HasField("model_turn")
    final = events[-1].final
    assert final.stop_reason == agent_pb2.STOP_REASON_ERROR and "nosuch" in final.error, final
