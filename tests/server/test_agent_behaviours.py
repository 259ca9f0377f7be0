"""The mini-agent behaviours through a real mesh: gRPC AgentRun/AgentStep and the OpenAI door.

A scripted OpenAI-wire upstream plays two models (`weak`, `strong`); the mesh's agent has
the real stdio MCP test server, a real HTTP tool server and its own sandbox.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from http_tools_server import HttpToolServer
from meshutil import RunningMesh, mesh_settings, start_mesh
from scripted_upstream import ScriptedUpstream

from scillm.agent.v1 import agent_pb2
from scillm.clients import RPCError, ScillmClient
from scillm.completion.v1 import completion_pb2 as cpb
from scillm.server.manifests import open_run_store

HERE = Path(__file__).parent


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
        "name": name, "arguments": json.dumps(arguments)}}]}


class Mesh:
    def __init__(self, running: RunningMesh, upstream: ScriptedUpstream,
                 tools: HttpToolServer, store: Path) -> None:
        self.running, self.upstream, self.tools, self.store = running, upstream, tools, store

    def script(self, *replies: dict[str, Any]) -> None:
        self.upstream.replies = list(replies)
        self.upstream._index = 0
        self.upstream.requests.clear()

    def models(self) -> list[str]:
        return [r["model"] for r in self.upstream.requests]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    upstream = ScriptedUpstream([{"content": "unused"}]).start()
    tools = HttpToolServer(busy_429s=1, retry_after="1").start()
    tmp = tmp_path_factory.mktemp("behaviours")
    config = tmp / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": upstream.url, "api_key": "x"}}
            for name in ("weak", "strong")],
        "litellm_settings": {"cache": False},
        "mcp_servers": {"demo": {"command": sys.executable,
                                 "args": [str(HERE / "agent" / "mcp_server.py"), "stdio"]}},
        "http_tool_servers": {"lab": {"url": tools.url,
                                      "headers": {"authorization": "Bearer lab"}}},
        "agent_settings": {"escalation_iterations": 2}}))
    running = start_mesh(mesh_settings(tmp, config_path=config,
                                       services=("completion", "agent")))
    yield Mesh(running, upstream, tools, tmp)
    running.stop()
    tools.stop()
    upstream.stop()


def _request(text: str = "Solve it.", **config: Any) -> agent_pb2.AgentRunRequest:
    return agent_pb2.AgentRunRequest(
        messages=[cpb.Message(role=cpb.ROLE_USER, content=[cpb.ContentPart(text=text)])],
        config=agent_pb2.AgentConfig(model="weak", max_iterations=4, **config))


async def _run(mesh: Mesh, request: agent_pb2.AgentRunRequest) -> list[Any]:
    async with ScillmClient(mesh.running.grpc_target) as client:
        return [e async for e in client.agent.run(request)]


def _openai(mesh: Mesh) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{mesh.running.http_url}/v1", api_key="x", max_retries=0)


async def test_giving_up_escalates_to_the_stronger_model(mesh: Mesh) -> None:
    mesh.script({"content": "Sorry, I give up."}, {"content": "42"})
    events = await _run(mesh, _request(escalation_model="strong"))
    final = events[-1].final
    assert final.answer == "42" and final.stop_reason == agent_pb2.STOP_REASON_SUCCESS
    m = final.metrics
    assert (m.escalated, m.used_model, m.escalation_reason) == (True, "strong", "gave_up")
    assert [e.model_turn.model for e in events if e.HasField("model_turn")] == ["weak", "strong"]
    assert mesh.models() == ["weak", "strong"]


def test_the_turn_budget_escalates_through_the_openai_door(mesh: Mesh) -> None:
    mesh.script(_call("c1", "run_python", {"code": "print(1)"}), {"content": "done"})
    reply = _openai(mesh).chat.completions.create(
        model="agent/weak", messages=[{"role": "user", "content": "go"}],
        extra_body={"max_iterations": 1, "escalation_model": "strong", "languages": ["python"],
                    "shell_presets": ["go"], "trace": True})
    assert reply.choices[0].message.content == "done"
    result = (reply.model_extra or {})["scillm"]["result"]
    assert Path(result["trace_path"]).parent == mesh.store / "agent-traces"
    offered = {t["function"]["name"] for t in mesh.upstream.requests[0]["tools"]}
    assert {"run_python", "run_shell"} <= offered
    metrics = result["metrics"]
    assert metrics["escalated"] is True and metrics["used_model"] == "strong"
    assert metrics["escalation_reason"] == "max_iterations"
    assert mesh.models() == ["weak", "strong"]
    assert mesh.upstream.requests[1]["messages"][-1]["content"].startswith("Escalated to strong")


async def test_a_step_that_gives_up_names_the_escalation_model(mesh: Mesh) -> None:
    mesh.script({"content": "I cannot solve this."})
    run = _request(escalation_model="strong")
    step = agent_pb2.AgentStepRequest(messages=run.messages, config=run.config)
    async with ScillmClient(mesh.running.grpc_target) as client:
        reply = await client.agent.step(step)
    assert not reply.done and reply.escalate_to == "strong" and reply.model == "weak"


def test_history_is_pruned_to_the_message_and_character_caps(mesh: Mesh) -> None:
    mesh.script({"content": "ok"})
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "The task."}]
    for i in range(20):
        messages += [{"role": "assistant", "content": f"answer {i} " * 20},
                     {"role": "user", "content": f"question {i} " * 20}]
    reply = httpx.post(f"{mesh.running.http_url}/v1/chat/completions", timeout=60, json={
        "model": "agent/weak", "messages": messages, "max_history_messages": 5,
        "max_history_chars": 100_000})
    assert reply.status_code == 200, reply.text
    sent = mesh.upstream.requests[0]["messages"]
    assert sent[0] == messages[0] and sent[1] == messages[1] and sent[-1] == messages[-1]
    assert len([m for m in sent if m["role"] != "system"]) == 5
    mesh.script({"content": "ok"})
    reply = httpx.post(f"{mesh.running.http_url}/v1/chat/completions", timeout=60, json={
        "model": "agent/weak", "messages": messages, "max_history_chars": 1000})
    sent = mesh.upstream.requests[0]["messages"]
    assert sent[:2] == messages[:2] and sent[-1] == messages[-1] and len(sent) < 8


def test_json_mode_repairs_once_through_the_openai_door(mesh: Mesh) -> None:
    mesh.script({"content": "Here it is: {a: 1}"}, {"content": '{"a": 1}'})
    reply = _openai(mesh).chat.completions.create(
        model="agent/weak", messages=[{"role": "user", "content": "JSON please"}],
        response_format={"type": "json_object"})
    assert reply.choices[0].message.content == '{"a": 1}'
    result = (reply.model_extra or {})["scillm"]["result"]
    assert result["json_valid"] is True and result["metrics"]["json_repairs"] == 1
    repair = mesh.upstream.requests[1]["messages"][-1]
    assert repair["role"] == "user" and "not valid JSON" in repair["content"]


async def test_json_mode_step_asks_for_the_repair(mesh: Mesh) -> None:
    mesh.script({"content": "not json"})
    run = _request()
    run.config.response_format.type = cpb.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    async with ScillmClient(mesh.running.grpc_target) as client:
        reply = await client.agent.step(agent_pb2.AgentStepRequest(
            messages=run.messages, config=run.config))
    assert not reply.done and reply.HasField("json_valid") and not reply.json_valid
    assert "not valid JSON" in reply.new_messages[-1].content[0].text


async def test_the_shell_tool_runs_allowed_commands_in_the_sandbox(mesh: Mesh) -> None:
    mesh.script({"content": None, "tool_calls": [
        {"id": "ok", "type": "function", "function": {"name": "run_shell", "arguments":
            json.dumps({"command": "python3 -c 'print(6 * 7)'"})}},
        {"id": "no", "type": "function", "function": {"name": "run_shell", "arguments":
            json.dumps({"command": "curl http://example.com"})}}]}, {"content": "42"})
    events = await _run(mesh, _request(shell_presets=["python"]))
    results = {e.tool_result.result.tool_call_id: e.tool_result.result
               for e in events if e.HasField("tool_result")}
    assert not results["ok"].is_error and "42" in results["ok"].output
    assert results["no"].is_error and "not allowed" in results["no"].output
    offered = {t["function"]["name"] for t in mesh.upstream.requests[0]["tools"]}
    assert "run_shell" in offered
    async with ScillmClient(mesh.running.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.agent.run(_request(shell_presets=["cobol"]))]
    assert info.value.param == "shell_presets"


async def test_a_trace_is_written_beside_the_run_store(mesh: Mesh) -> None:
    mesh.script(_call("m1", "demo__add", {"a": 20, "b": 22}), {"content": "42"})
    events = await _run(mesh, _request(trace=True))
    final = events[-1].final
    path = Path(final.trace_path)
    assert path.parent == mesh.store / "agent-traces"
    assert path.name == f"{final.manifest.run_id}.jsonl"
    text = await asyncio.to_thread(path.read_text)
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["type"] for line in lines] == ["iteration", "tool_invocation", "iteration",
                                                "run"]
    tool = lines[1]
    assert (tool["tool_name"], tool["ok"], tool["result"], tool["model"]) == (
        "demo__add", True, "42", "weak")
    assert tool["arguments"] == {"a": 20, "b": 22} and tool["call_index"] == 0
    assert lines[-1]["stopped_reason"] == "success"
    untraced = await _run(mesh, _request())
    assert not untraced[-1].final.trace_path


@pytest.mark.parametrize("run_id", ["../../escape/pwn", "/tmp/abs/pwn", "bad\x00id", ".hidden"])
async def test_a_run_id_that_is_not_a_plain_token_writes_no_trace(mesh: Mesh, run_id: str,
                                                                  tmp_path: Path) -> None:
    """The trace is `<trace dir>/<run id>.jsonl`: "../../escape/pwn" wrote (as the mesh's
    user) outside the dir, and a NUL byte was an INTERNAL error."""
    request = _request(trace=True)
    request.context.run_id = run_id.replace("/tmp", str(tmp_path))
    traces = mesh.store / "agent-traces"

    def written() -> set[Path]:
        return {*traces.rglob("*"), *tmp_path.rglob("*"), *mesh.store.parent.glob("escape")}
    before = written()
    async with ScillmClient(mesh.running.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.agent.run(request)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == "context.run_id"
    assert written() == before


@pytest.mark.parametrize(("field", "value"), [
    ("max_iterations", 2**31 - 1), ("max_total_time", 10**9), ("max_total_tokens", 2**62)])
async def test_a_run_may_not_ask_for_budgets_of_no_end(mesh: Mesh, field: str,
                                                        value: int) -> None:
    """2^31 turns or 1e9 seconds were accepted: with an echo model and auto_run_code, a
    self-printing code block looped until cancelled, holding the shared sandbox."""
    request = _request()
    if field == "max_total_time":
        request.config.max_total_time.FromSeconds(value)
    else:
        setattr(request.config, field, value)
    async with ScillmClient(mesh.running.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.agent.run(request)]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.param == {"max_total_time": "max_total_seconds"}.get(field, field)


async def test_http_tools_are_called_and_a_429_waits_its_retry_after(mesh: Mesh) -> None:
    mesh.script({"content": None, "tool_calls": [
        {"id": "b", "type": "function", "function": {"name": "lab__busy", "arguments": "{}"}},
        {"id": "a", "type": "function", "function": {
            "name": "lab__add", "arguments": json.dumps({"a": 1, "b": 2})}}]},
        {"content": "3"})
    mesh.tools.busy_429s, mesh.tools._busy_seen = 1, 0
    events = await _run(mesh, _request(http_tool_headers={"x-run": "r7"}))
    results = {e.tool_result.result.tool_call_id: e.tool_result.result
               for e in events if e.HasField("tool_result")}
    assert results["b"].output == "done after waiting" and not results["b"].is_error
    assert results["a"].output == "3"
    (first, _, _), (second, headers, _) = mesh.tools.invokes("busy")
    assert second - first >= 1.0
    assert headers["authorization"] == "Bearer lab" and headers["x-run"] == "r7"
    stored = open_run_store(mesh.store / "runs.sqlite3").get(events[-1].final.manifest.run_id)
    assert stored is not None
    assert dict(stored.request.config.http_tool_headers) == {"x-run": "[redacted]"}
    async with ScillmClient(mesh.running.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            [e async for e in client.agent.run(_request(http_tool_servers=["nope"]))]
    assert "not configured" in info.value.message


@pytest.mark.parametrize(("model", "code"), [
    ("", grpc.StatusCode.INVALID_ARGUMENT),
    ("no-such-model", grpc.StatusCode.NOT_FOUND)])
async def test_a_step_whose_model_call_is_the_callers_mistake_says_so(
        mesh: Mesh, model: str, code: grpc.StatusCode) -> None:
    """A step's model call is the step's whole work: a model the caller left out or named
    wrongly was UNAVAILABLE (an outage, to be retried); it is the model call's own code."""
    run = _request()
    run.config.model = model
    step = agent_pb2.AgentStepRequest(messages=run.messages, config=run.config)
    async with ScillmClient(mesh.running.grpc_target) as client:
        with pytest.raises(RPCError) as info:
            await client.agent.step(step)
    assert info.value.code == code, info.value
