"""Story 5: the agent. A model calls an MCP server's tool (over stdio) and the sandboxed
Python tool, then answers from what they returned; through gRPC `AgentRun` and through the
OpenAI door as `agent/<model>`.

The model is a scripted OpenAI-wire server started here: the embedded Gemma 3 270M is a base
model and cannot call tools. Its last turn quotes the tool results it was sent back, so the
answer proves they went round.

Run: .venv/bin/python scenarios/agent_tools.py
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

import _kit
import openai
from _kit import Reply, check, figure, show, step

from scillm.agent.v1 import agent_pb2
from scillm.clients import ScillmClient

MCP_SERVER = '''
from mcp.server.mcpserver import MCPServer

app = MCPServer("lab")


@app.tool()
def molar_mass(formula: str) -> float:
    """Molar mass in g/mol of H2O or CO2."""
    return {"H2O": 18.015, "CO2": 44.009}[formula]


if __name__ == "__main__":
    app.run()
'''


def model(request: dict[str, Any]) -> Reply:
    """The scripted model: MCP tool, then Python, then an answer quoting both results."""
    results = [m["content"] for m in request["messages"] if m["role"] == "tool"]
    if not results:
        return Reply(message={"tool_calls": [{"id": "t1", "type": "function", "function": {
            "name": "lab__molar_mass", "arguments": json.dumps({"formula": "H2O"})}}]})
    if len(results) == 1:
        code = f"print(round(36.03 / {float(results[0])}, 3))"
        return Reply(message={"tool_calls": [{"id": "t2", "type": "function", "function": {
            "name": "run_python", "arguments": json.dumps({"code": code})}}]})
    printed = stdout(results[1])
    return Reply(message={"content": f"H2O weighs {results[0]} g/mol, so 36.03 g is "
                                     f"{printed} mol."})


def stdout(tool_output: str) -> str:
    """What the program printed, from the code tool's report (status, exit_code, stdout)."""
    return tool_output.partition("stdout:\n")[2].strip()


def story(stack: contextlib.ExitStack[Any]) -> None:
    """Story 5: the agent with an MCP server (stdio) and the sandboxed Python tool"""
    tmp = _kit.workdir(stack)
    upstream = _kit.Upstream(stack, model)
    (tmp / "lab_server.py").write_text(MCP_SERVER)
    config = tmp / "config.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "scripted", "litellm_params": {
            "model": "openai/scripted", "api_base": upstream.url, "api_key": "unused"}}],
        "mcp_servers": {"lab": {"command": sys.executable,
                                "args": [str(tmp / "lab_server.py")]}},
        "agent_settings": {"max_iterations": 6}}))
    mesh = _kit.serve(stack, "mesh", "--service", "completion", "--service", "agent",
                      "--http-port", "0", "--config", str(config), env=_kit.mesh_env(tmp),
                      directory=tmp)
    question = "How many moles are 36.03 g of water?"

    step("gRPC AgentRun: every event as it streams")
    request = agent_pb2.AgentRunRequest(config=agent_pb2.AgentConfig(
        model="scripted", max_iterations=6, languages=["python"], mcp_servers=["lab"]))
    message = request.messages.add(role=1)  # ROLE_USER
    message.content.add(text=question)

    async def run() -> list[Any]:
        async with ScillmClient(mesh.grpc) as client:
            return [event async for event in client.agent.run(request, timeout=120)]

    events = asyncio.run(run())
    for event in events:
        kind = event.WhichOneof("event")
        body = getattr(event, kind)
        if kind == "model_turn":
            show(f"model_turn   iteration {body.iteration}")
        elif kind == "tool_call":
            call = body.tool_call.function
            show(f"tool_call    {call.name}({call.arguments})")
        elif kind == "tool_result":
            show(f"tool_result  {body.result.name} -> {body.result.output.strip()!r}"
                 f"{'  (error)' if body.result.is_error else ''}")
        elif kind == "final":
            show(f"final        {body.answer!r}  stop={agent_pb2.StopReason.Name(body.stop_reason)}"
                 f"  iterations={body.metrics.iterations}  tool_calls={body.metrics.tool_calls}")
        else:
            show(kind)
    results = [e.tool_result.result for e in events if e.HasField("tool_result")]
    check([r.name for r in results] == ["lab__molar_mass", "run_python"],
          "the MCP tool, then the sandboxed Python tool, were called")
    check(not any(r.is_error for r in results) and results[0].output.strip() == "18.015",
          "the MCP server answered over stdio")
    check(stdout(results[1].output) == "2.0", "Python ran in the sandbox and printed 2.0")
    final = events[-1].final
    check(final.answer == "H2O weighs 18.015 g/mol, so 36.03 g is 2.0 mol."
          and final.stop_reason == agent_pb2.STOP_REASON_SUCCESS,
          "the answer quotes both tool results")

    step("the OpenAI door: model agent/scripted")
    sdk = openai.OpenAI(base_url=f"{mesh.http}/v1", api_key="unused", max_retries=0,
                        timeout=120)
    reply = sdk.chat.completions.create(
        model="agent/scripted", messages=[{"role": "user", "content": question}],
        extra_body={"max_iterations": 6, "languages": ["python"], "mcp_servers": ["lab"]})
    show(f"content {reply.choices[0].message.content!r}")
    result = (reply.model_extra or {})["scillm"]["result"]
    show(f"run_id {result['manifest']['run_id']}  iterations {result['metrics']['iterations']}")
    check(reply.choices[0].message.content == final.answer, "the same answer through the door")
    figure(f"{len(results)} tool calls (MCP + sandbox), answer {final.answer!r}")


if __name__ == "__main__":
    _kit.main(story)
