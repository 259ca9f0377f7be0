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


async def _traced(tmp_path: Path, executor: SubprocessExecutor, path: Path,
                  arguments: str) -> list[str]:
    """A run whose model calls a tool with `arguments` (raw), traced to `path`; its final
    event's stop reason and error."""
    model = ScriptedModel([{"content": "", "tool_calls": [
        {"id": "c1", "name": "demo__add", "arguments": arguments}]}, {"content": "done"}])
    trace = JsonlTrace(path, "r1")
    finals = []
    async with AgentEngine(mcp_settings(model="m"), model, executor) as engine:
        async for event in engine.run([{"role": "user", "content": "go"}]):
            await trace.record(event)
            if type(event).__name__ == "FinalEvent":
                finals.append(event.result.stop_reason.value)  # type: ignore[attr-defined]
    await trace.close()
    return finals


async def test_arguments_nested_too_deep_are_traced_as_raw_text(
        executor: SubprocessExecutor, tmp_path: Path) -> None:
    """The trace read a tool call's arguments with json.loads: arguments nested 100,000
    deep (a hostile model's) raised RecursionError and the traced run ended INTERNAL."""
    path = tmp_path / "traces" / "r1.jsonl"
    assert await _traced(tmp_path, executor, path, "[" * 100000 + "]" * 100000) == ["success"]
    tool = next(json.loads(line) for line in path.read_text().splitlines()
                if '"tool_invocation"' in line)
    assert tool["arguments"] is None and tool["arguments_raw"].startswith("[[[")


async def test_a_trace_does_not_follow_a_link_nor_fail_the_run(
        executor: SubprocessExecutor, tmp_path: Path) -> None:
    """A symlink at the trace's path was followed (the trace appended to the file it
    named); a directory there made the run INTERNAL. Neither is written through, and the
    run goes on untraced."""
    victim = tmp_path / "victim.txt"
    victim.write_text("keep\n")
    traces = tmp_path / "traces"
    traces.mkdir()
    (traces / "link.jsonl").symlink_to(victim)
    (traces / "dir.jsonl").mkdir()
    for name in ("link.jsonl", "dir.jsonl"):
        assert await _traced(tmp_path, executor, traces / name, '{"a": 1, "b": 2}') == [
            "success"], name
    assert victim.read_text() == "keep\n"
