"""What a step or a run produces: tool calls, results, usage, events and results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AgentEvent",
    "FinalEvent",
    "Message",
    "Metrics",
    "ModelTurnEvent",
    "RunResult",
    "StepResult",
    "StopReason",
    "ToolCall",
    "ToolCallEvent",
    "ToolResult",
    "ToolResultEvent",
    "Usage",
]

#: An OpenAI chat message (`role`, `content`, and `tool_calls` / `tool_call_id`).
Message = dict[str, Any]


class StopReason(enum.Enum):
    """Why a run ended."""

    SUCCESS = "success"
    BUDGET = "budget"
    MAX_ITERATIONS = "max_iterations"
    ERROR = "error"


@dataclass(frozen=True)
class Usage:
    """Tokens reported by the model."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.prompt_tokens + other.prompt_tokens,
                     self.completion_tokens + other.completion_tokens,
                     self.total_tokens + other.total_tokens)


@dataclass(frozen=True)
class ToolCall:
    """One tool call made by the model (or an auto-run of a fenced code block)."""

    #: The call's id: the model's, else derived (`call_<iteration>_<index>`).
    id: str
    #: Tool name as offered to the model.
    name: str
    #: Raw JSON text of the arguments, as the model wrote it.
    arguments: str
    #: True for an auto-run code block (no tool call in the assistant message).
    auto: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "auto": self.auto}


@dataclass(frozen=True)
class ToolResult:
    """The outcome of one tool call."""

    tool_call_id: str
    name: str
    #: Output given back to the model.
    output: str
    is_error: bool = False
    #: Seconds taken; not part of the transcript (it varies from run to run).
    duration_s: float = field(default=0.0, compare=False)
    #: A program's exit code and streams, when the tool ran one (for traces only).
    exit_code: int | None = field(default=None, compare=False)
    stdout: str | None = field(default=None, compare=False)
    stderr: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"tool_call_id": self.tool_call_id, "name": self.name, "output": self.output,
                "is_error": self.is_error}


@dataclass(frozen=True)
class StepResult:
    """One model turn and the tool calls it made."""

    #: Messages this step adds: the assistant turn, tool results, observations.
    new_messages: tuple[Message, ...]
    tool_calls: tuple[ToolCall, ...]
    tool_results: tuple[ToolResult, ...]
    #: The model gave a final answer (a reply with no tool calls and nothing to auto-run).
    done: bool
    #: The final answer, when done.
    final_answer: str | None
    usage: Usage
    #: With a JSON response_format and a reply without tool calls: whether it passed.
    json_valid: bool | None = None
    #: Seconds the model turn took (not deterministic).
    model_seconds: float = field(default=0.0, compare=False)
    #: The model that answered.
    model: str = ""
    #: The step asked for the JSON repair round (the last new message asks it).
    json_repair: bool = False
    #: The model gave up: the next step should use this (escalation) model.
    escalate_to: str | None = None


@dataclass(frozen=True)
class Metrics:
    """Summary of a run. Times are wall-clock seconds."""

    iterations: int
    tool_calls: int
    usage: Usage
    step_seconds: tuple[float, ...] = field(compare=False)
    total_seconds: float = field(compare=False)
    #: Whether the run switched to the escalation model, and why.
    escalated: bool = False
    escalation_reason: str = ""
    #: The model of the last turn.
    used_model: str = ""
    #: JSON repair rounds asked.
    json_repairs: int = 0


@dataclass(frozen=True)
class RunResult:
    """The end of a run: the answer, why it stopped, and everything needed to replay it."""

    answer: str
    stop_reason: StopReason
    metrics: Metrics
    #: The whole conversation: the initial messages, then every message the run added.
    transcript: tuple[Message, ...]
    #: Every tool call and its result, in order.
    tool_io: tuple[tuple[ToolCall, ToolResult], ...]
    #: With stop reason `error`: what went wrong.
    error: str | None = None
    #: With a JSON response_format: whether the answer parses as JSON.
    json_valid: bool | None = None
    #: Number of initial messages at the head of `transcript`.
    initial_count: int = 0
    #: Tool servers (MCP, HTTP) the run would have offered but skipped, as they did not
    #: answer: server name -> why (which names the server, not where it is).
    skipped_servers: Mapping[str, str] = field(default_factory=dict, compare=False)
    #: With stop reason `error`: the model call's failure that ended the run, its cause
    #: chained (a servicer reads the caller's mistakes from it).
    failure: BaseException | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ModelTurnEvent:
    """A model reply."""

    iteration: int
    message: Message
    usage: Usage
    seconds: float = field(compare=False)
    #: The model that answered.
    model: str = ""


@dataclass(frozen=True)
class ToolCallEvent:
    """A tool call about to run."""

    iteration: int
    tool_call: ToolCall


@dataclass(frozen=True)
class ToolResultEvent:
    """A tool call's result."""

    iteration: int
    result: ToolResult


@dataclass(frozen=True)
class FinalEvent:
    """Terminal event of a run, always last."""

    result: RunResult


AgentEvent = ModelTurnEvent | ToolCallEvent | ToolResultEvent | FinalEvent


def usage_from(response: Mapping[str, Any]) -> Usage | None:
    """The `usage` of a chat.completion, or None when it has none."""
    raw = response.get("usage")
    if not isinstance(raw, Mapping):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    total = int(raw.get("total_tokens") or prompt + completion)
    return Usage(prompt, completion, total)
