"""Tool servers and models are untrusted: through a real mesh's AgentService, what they say
reaches the caller without failing the run, and a caller learns no configured address."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.agent.v1 import agent_pb2
from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as cpb
from scillm.server.agent import RunConfig
from scillm.server.agent._records import ToolCallEvent
from scillm.server.agent.servicer import final_to_proto

HERE = Path(__file__).parent
#: What the tool server answers: JSON whose escape is a lone surrogate, beside valid text.
SURROGATE_REPLY = b'{"ok": true, "text": "bad \\ud800 text, caf\\u00e9 \\u03b1"}'


class _SurrogateTools(ThreadingHTTPServer):
    """An HTTP tool server (the seed's protocol) whose one tool answers SURROGATE_REPLY."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(json.dumps([{"type": "function", "function": {
                    "name": "odd", "description": "Answers a lone surrogate.",
                    "parameters": {"type": "object"}}}]).encode())

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self._reply(SURROGATE_REPLY)

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


class Mesh:
    def __init__(self, running: RunningMesh, upstream: ScriptedUpstream,
                 tools: _SurrogateTools) -> None:
        self.running, self.upstream, self.tools = running, upstream, tools

    def script(self, *replies: dict[str, Any]) -> None:
        self.upstream.replies = list(replies)
        self.upstream._index = 0
        self.upstream.requests.clear()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    upstream = ScriptedUpstream([{"content": "unused"}]).start()
    tools = _SurrogateTools()
    tmp = tmp_path_factory.mktemp("untrusted")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "weak", "litellm_params": {
            "model": "openai/weak", "api_base": upstream.url, "api_key": "x"}}],
        "litellm_settings": {"cache": False},
        "mcp_servers": {"demo": {"command": sys.executable,
                                 "args": [str(HERE / "mcp_server.py"), "stdio"]}},
        "http_tool_servers": {"lab": {"url": tools.url}}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "agent")))
    yield Mesh(running, upstream, tools)
    running.stop()
    tools.shutdown()
    upstream.stop()


def _call(name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
        "name": name, "arguments": json.dumps(arguments)}}]}


def _request(**config: Any) -> agent_pb2.AgentRunRequest:
    return agent_pb2.AgentRunRequest(
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text="go")])],
        config=agent_pb2.AgentConfig(model="weak", max_iterations=3, **config))


async def _run(mesh: Mesh, request: agent_pb2.AgentRunRequest) -> list[Any]:
    async with ScillmClient(mesh.running.grpc_target) as client:
        return [e async for e in client.agent.run(request)]


async def test_a_tools_lone_surrogate_reaches_caller_and_model_escaped(mesh: Mesh) -> None:
    """An HTTP tool answering {"text": "bad \\ud800"} failed the run INTERNAL: a protobuf
    string field takes no lone surrogate (UnicodeEncodeError)."""
    mesh.script(_call("lab__odd", {}), {"content": "done"})
    events = await _run(mesh, _request(http_tool_servers=["lab"]))
    result = next(e.tool_result.result for e in events if e.HasField("tool_result"))
    assert result.output == "bad \\ud800 text, café α" and not result.is_error
    final = events[-1].final
    assert final.answer == "done" and final.stop_reason == agent_pb2.STOP_REASON_SUCCESS
    tool_message = mesh.upstream.requests[1]["messages"][-1]
    assert tool_message["role"] == "tool"
    assert tool_message["content"] == "bad \\ud800 text, café α"


async def test_an_mcp_tools_lone_surrogate_fails_no_run(mesh: Mesh) -> None:
    """The demo MCP server's `fail` given a lone surrogate to say: the MCP SDK reads no
    JSON holding one (its server closes), and the run goes on with the tool's error."""
    mesh.script(_call("demo__fail", {"reason": "bad \ud800 reason"}), {"content": "done"})
    events = await _run(mesh, _request(mcp_servers=["demo"]))
    result = next(e.tool_result.result for e in events if e.HasField("tool_result"))
    assert result.is_error and result.output.startswith("error (ToolExecutionError)")
    assert events[-1].final.answer == "done"


async def test_a_models_lone_surrogate_reaches_the_caller_as_u_fffd(mesh: Mesh) -> None:
    """Through the mesh the completion service reads a model's lone surrogate as U+FFFD
    (as a UTF-8 decoder with errors="replace" would): the run ends with its answer, not
    INTERNAL nor an error."""
    mesh.script({"content": "the answer \ud800 is 42"})
    events = await _run(mesh, _request())
    final = events[-1].final
    assert final.stop_reason != agent_pb2.STOP_REASON_ERROR, final
    assert final.answer == "the answer \ufffd is 42", final


async def test_an_injected_models_lone_surrogate_is_escaped() -> None:
    """A model called in-process (a script, a replayed transcript) is read the same way:
    its content, call names and arguments reach the caller escaped."""
    from scillm.server.agent import AgentEngine, AgentSettings, ScriptedModel

    model = ScriptedModel([
        {"content": "", "tool_calls": [{"name": "no\ud800pe", "id": "c\udfff",
                                        "arguments": '{"x": "\ud800"}'}]},
        {"content": "the answer \ud800 is 42, café"}])
    async with AgentEngine(AgentSettings(languages=()), model, None) as engine:
        events = [e async for e in engine.run([{"role": "user", "content": "go"}],
                                               RunConfig(max_iterations=3))]
    result = events[-1].result
    assert result.answer == "the answer \\ud800 is 42, café"
    assert final_to_proto(result).answer == result.answer  # a proto takes it
    call = next(e.tool_call for e in events if isinstance(e, ToolCallEvent))
    assert call.name == "no\\ud800pe" and call.id == "c\\udfff"
    assert call.arguments == '{"x": "\\ud800"}'


async def test_an_unknown_tool_server_is_named_without_any_configured_address(
        mesh: Mesh) -> None:
    """The error named every configured server with its URL (`lab at http://...`): any
    caller read the operator's internal addresses."""
    with pytest.raises(RPCError) as info:
        await _run(mesh, _request(http_tool_servers=["nope"]))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'nope'" in info.value.message and "'lab'" in info.value.message
    assert mesh.tools.url not in info.value.message
    assert "127.0.0.1" not in info.value.message
    # A configured server's URL still names it (the seed's tool_http_base_url).
    mesh.script({"content": "done"})
    events = await _run(mesh, _request(http_tool_servers=[mesh.tools.url]))
    assert events[-1].final.answer == "done"
