"""An agent run as its page shows it: the conversation with each tool call folded
together with its result, and how much of its budget the run used."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import json_format

from scillm.agent.v1 import agent_pb2 as ag
from scillm.completion.v1 import completion_pb2 as cp

from ._charts import Span
from ._text import Capped, cap
from ._views import duration_ms, enum_name

__all__ = ["AgentView", "agent_view"]


@dataclass(frozen=True)
class ToolCallView:
    """A tool call and what it returned."""

    call_id: str
    name: str
    arguments: str
    output: Capped | None
    is_error: bool
    ms: float | None


@dataclass
class Turn:
    """One message of the conversation; an assistant's carries its tool calls."""

    role: str
    text: str
    tool_calls: list[ToolCallView] = field(default_factory=list)
    #: A tool message whose call is not in the conversation (shown on its own).
    tool_output: Capped | None = None


@dataclass(frozen=True)
class Budget:
    """One budget: what was used of what was allowed (None: no limit was set)."""

    name: str
    used: float
    limit: float | None
    unit: str

    @property
    def fraction(self) -> float | None:
        return min(self.used / self.limit, 1.0) if self.limit else None


@dataclass
class AgentView:
    """Everything the agent page shows."""

    final: ag.AgentFinal
    stop_reason: str
    turns: list[Turn]
    budgets: list[Budget]
    spans: list[Span]


def _text(message: cp.Message) -> str:
    return "\n".join(p.text or p.refusal for p in message.content
                     if p.WhichOneof("part") in ("text", "refusal"))


def _pretty(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), indent=2, ensure_ascii=False)
    except ValueError:
        return arguments


def _events(stored: Iterable[dict[str, Any]]) -> list[ag.AgentRunResponse]:
    return [json_format.ParseDict(e, ag.AgentRunResponse(), ignore_unknown_fields=True)
            for e in stored]


def agent_view(request: ag.AgentRunRequest, final: ag.AgentFinal,
               stored_events: Iterable[dict[str, Any]]) -> AgentView:
    """The page's content from the stored request, final event and stream events."""
    events = _events(stored_events)
    results = {e.tool_result.result.tool_call_id: e.tool_result.result
               for e in events if e.HasField("tool_result")}
    tool_messages = {m.tool_call_id: m for m in final.transcript
                     if m.role == cp.ROLE_TOOL and m.tool_call_id}
    called = {c.id for m in final.transcript for c in m.tool_calls}
    turns: list[Turn] = []
    for m in final.transcript:
        if m.role == cp.ROLE_TOOL and m.tool_call_id in called:
            continue  # folded into its call
        turn = Turn(enum_name(cp.Role, m.role), _text(m))
        if m.role == cp.ROLE_TOOL:
            turn.tool_output = cap(turn.text)
            turn.text = ""
        for c in m.tool_calls:
            result = results.get(c.id)
            if result is not None:
                output, error, ms = cap(result.output), result.is_error, duration_ms(
                    result.duration)
            elif c.id in tool_messages:
                output, error, ms = cap(_text(tool_messages[c.id])), False, None
            else:
                output, error, ms = None, False, None
            turn.tool_calls.append(ToolCallView(c.id, c.function.name,
                                                _pretty(c.function.arguments), output, error,
                                                ms))
        turns.append(turn)
    config, metrics = request.config, final.metrics
    budgets = [
        Budget("iterations", metrics.iterations, config.max_iterations or None, ""),
        Budget("tokens", metrics.usage.total_tokens, config.max_total_tokens or None, ""),
        Budget("time", duration_ms(metrics.total_time) / 1000,
               duration_ms(config.max_total_time) / 1000 or None, "s"),
        Budget("tool calls", metrics.tool_calls, None, "")]
    spans: list[Span] = []
    at = 0.0
    for e in events:
        if e.HasField("model_turn"):
            ms = duration_ms(e.model_turn.duration)
            spans.append(Span(f"model turn {e.model_turn.iteration}", ms, at, "model"))
        elif e.HasField("tool_result"):
            r = e.tool_result.result
            ms = duration_ms(r.duration)
            spans.append(Span(f"{r.name} ({e.tool_result.iteration})", ms, at, "tool"))
        else:
            continue
        at += ms
    if not spans:  # stored before events were kept: the steps' times
        for i, step in enumerate(metrics.step_times, 1):
            ms = duration_ms(step)
            spans.append(Span(f"step {i}", ms, at, "step"))
            at += ms
    return AgentView(final, enum_name(ag.StopReason, final.stop_reason), turns, budgets,
                     spans)
