"""JSONL run traces: one line per model turn and per tool call, with the seed's fields.

    {"type": "iteration", "run_id", "iteration", "model", "router_call_ms", "usage",
     "tool_calls"}
    {"type": "tool_invocation", "run_id", "iteration", "call_index", "tool_name", "name",
     "tool_call_id", "arguments_raw", "arguments", "t_ms", "model", "ok", "rc", "result",
     "stdout", "stderr", "error", "auto"}
    {"type": "run", "run_id", "ok", "final_answer_preview", "stopped_reason", "error",
     "metrics": {"iterations", "ttotal_ms", "escalated", "used_model", "tool_calls"},
     "skipped_tool_servers"?: {name: why}}

The tool-invocation fields are the seed mini-agent's (`call_index` counts within the
iteration); the last line is its stored envelope with `final_answer_preview`, and, when
the run skipped tool servers that did not answer (`RunResult.skipped_servers`), which.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import IO, Any

from ._records import (
    AgentEvent,
    FinalEvent,
    ModelTurnEvent,
    ToolCall,
    ToolCallEvent,
    ToolResultEvent,
)

__all__ = ["JsonlTrace", "TraceState", "trace_lines"]

log = logging.getLogger("scillm.server.agent")

_PREVIEW = 200


class TraceState:
    """What later lines need from earlier events."""

    def __init__(self) -> None:
        self.model = ""
        self.calls: dict[str, ToolCall] = {}
        self.index: dict[int, int] = {}


def trace_lines(event: AgentEvent, run_id: str, state: TraceState) -> list[dict[str, Any]]:
    """The trace lines of one event (none for a tool call: its result carries it)."""
    if isinstance(event, ModelTurnEvent):
        state.model = event.model
        u = event.usage
        return [{"type": "iteration", "run_id": run_id, "iteration": event.iteration,
                 "model": event.model, "router_call_ms": round(event.seconds * 1000, 3),
                 "usage": {"prompt_tokens": u.prompt_tokens,
                           "completion_tokens": u.completion_tokens,
                           "total_tokens": u.total_tokens},
                 "tool_calls": len(event.message.get("tool_calls") or ())}]
    if isinstance(event, ToolCallEvent):
        state.calls[event.tool_call.id] = event.tool_call
        return []
    if isinstance(event, ToolResultEvent):
        r = event.result
        call = state.calls.pop(r.tool_call_id, None)
        raw = call.arguments if call is not None else None
        try:
            parsed = json.loads(raw) if raw else None
        except (ValueError, RecursionError):  # a model's arguments, nested past reading
            parsed = None
        index = state.index.get(event.iteration, 0)
        state.index[event.iteration] = index + 1
        return [{"type": "tool_invocation", "run_id": run_id, "iteration": event.iteration,
                 "call_index": index, "tool_name": r.name, "name": r.name,
                 "tool_call_id": r.tool_call_id, "arguments_raw": raw,
                 "arguments": parsed if isinstance(parsed, dict) else None,
                 "t_ms": round(r.duration_s * 1000, 3), "model": state.model,
                 "ok": not r.is_error, "rc": r.exit_code, "result": r.output,
                 "stdout": r.stdout, "stderr": r.stderr,
                 "error": r.output if r.is_error else None,
                 "auto": bool(call.auto) if call is not None else False}]
    assert isinstance(event, FinalEvent)
    result, m = event.result, event.result.metrics
    line: dict[str, Any] = {
        "type": "run", "run_id": run_id, "ok": result.stop_reason.value != "error",
        "final_answer_preview": result.answer[:_PREVIEW],
        "stopped_reason": result.stop_reason.value, "error": result.error,
        "metrics": {"iterations": m.iterations, "ttotal_ms": round(m.total_seconds * 1000, 3),
                    "escalated": m.escalated, "used_model": m.used_model,
                    "tool_calls": m.tool_calls}}
    if result.skipped_servers:
        line["skipped_tool_servers"] = dict(result.skipped_servers)
    return [line]


class JsonlTrace:
    """A run's trace file, appended to as the run goes (each line flushed)."""

    def __init__(self, path: Path, run_id: str) -> None:
        self.path = path
        self._run_id = run_id
        self._state = TraceState()
        self._file: IO[str] | None = None
        self._broken = False

    def _append(self, lines: list[dict[str, Any]]) -> None:
        if self._broken:
            return
        if self._file is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # Not through a link (a symlink there got the trace appended to the file
                # it named), and the run goes on untraced when the path will not do.
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                             0o644)
            except OSError as exc:
                self._broken = True
                log.warning("agent trace %s not written: %s", self.path, exc.strerror or exc)
                return
            self._file = os.fdopen(fd, "a", encoding="utf-8")
        for line in lines:
            self._file.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
        self._file.flush()

    async def record(self, event: AgentEvent) -> None:
        """Write the event's lines."""
        lines = trace_lines(event, self._run_id, self._state)
        if lines:
            await asyncio.to_thread(self._append, lines)

    async def close(self) -> None:
        """Close the file. Idempotent."""
        handle, self._file = self._file, None
        if handle is not None:
            await asyncio.to_thread(handle.close)
