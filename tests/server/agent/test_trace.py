"""JSONL run traces: a line per model turn and per tool call, with the seed's fields."""

from __future__ import annotations

import json
from pathlib import Path

from scillm.server.agent import AgentEngine, JsonlTrace, ScriptedModel

from .conftest import FIXTURES, SubprocessExecutor, mcp_settings

SEED_TOOL_FIELDS = {"call_index", "tool_name", "tool_call_id", "arguments_raw", "arguments",
                    "t_ms", "model", "name", "ok", "rc", "result", "stdout", "stderr", "error"}


async def test_a_run_leaves_one_line_per_turn_and_tool_call(
        executor: SubprocessExecutor, tmp_path: Path) -> None:
    """Tools of the real stdio MCP test server: one fails, two answer."""
    model = ScriptedModel.from_file(FIXTURES / "repair.json")
    model._replies.insert(2, {"content": "", "tool_calls": [
        {"id": "c3", "name": "demo__add", "arguments": {"a": 1, "b": 1}},
        {"id": "c4", "name": "demo__add", "arguments": {"a": 40, "b": 2}}]})
    trace = JsonlTrace(tmp_path / "traces" / "r1.jsonl", "r1")
    async with AgentEngine(mcp_settings(model="m"), model, executor) as engine:
        async for event in engine.run([{"role": "user", "content": "go"}]):
            await trace.record(event)
    await trace.close()
    lines = [json.loads(line) for line in trace.path.read_text().splitlines()]
    kinds = [line["type"] for line in lines]
    turns = kinds.count("iteration")
    assert turns == len(model.requests) and kinds[-1] == "run"
    assert kinds.count("tool_invocation") == sum(
        1 for m in model.requests[-1]["messages"] if m["role"] == "tool")
    tools = [line for line in lines if line["type"] == "tool_invocation"]
    assert all(SEED_TOOL_FIELDS <= set(t) for t in tools)
    failed, ok = tools[0], tools[-1]
    assert [(t["iteration"], t["call_index"]) for t in tools] == [(1, 0), (2, 0), (3, 0),
                                                                  (3, 1)]
    assert failed["ok"] is False and failed["error"] and failed["rc"] is None
    assert ok["ok"] is True and ok["model"] == "m" and ok["result"] == "42"
    assert ok["arguments"] == json.loads(ok["arguments_raw"])
    assert all(line["run_id"] == "r1" for line in lines)
    run = lines[-1]
    assert run["stopped_reason"] == "success" and run["ok"] is True
    assert run["final_answer_preview"] == "The answer is 42."
    assert run["metrics"]["iterations"] == turns and run["metrics"]["used_model"] == "m"
    assert run["metrics"]["escalated"] is False and run["metrics"]["ttotal_ms"] >= 0
