"""The agent envelopes <-> AgentRunRequest, and the seed's reply.

Ours, accepted by `POST /agent/run` and by `/v1/chat/completions` with an `agent/<model>`
name:

    {"messages": [...], "model": "<completion model>", "max_iterations": 8,
     "max_total_seconds": 60, "max_total_tokens"?: 20000, "enable_repair": true,
     "use_tools": true, "languages"?: ["python"], "mcp_servers"?: ["name"], "seed"?: 7,
     "temperature"?: 0, "top_p"?: 1, "max_tokens"?: 512 (or "max_completion_tokens"),
     "stop"?: ["END"], "presence_penalty"?: 0, "frequency_penalty"?: 0,
     "response_format"?: {...}, "reasoning_effort"?: "low",
     "auto_run_code"?: false,
     "escalation_model"?: "gpt-4o", "escalation_iterations"?: 3,
     "max_history_messages"?: 50, "max_history_chars"?: 64000,
     "shell_allowlist"?: ["git status"], "shell_presets"?: ["python"],
     "http_tool_servers"?: ["lab"], "http_tool_headers"?: {...}, "trace"?: true,
     "scillm"?: {"session_id", "track"}}

The seed's agent app (`POST /agent/run`, see `envelope.is_seed_agent`):

    {"messages": [...], "model": "...", "tool_backend": "local" | "http" | "echo",
     "tool_http_base_url"?: "http://127.0.0.1:8788", "tool_http_headers"?: {...},
     "use_tools"?: false, "auto_run_code_on_code_block"?: false, "max_iterations"?: 3,
     "max_total_seconds"?: 60, "escalate_on_budget_exceeded"?: false,
     "escalate_model"?: "...", "enable_repair"?: true}

answered `{ok, final_answer, stopped_reason, messages, metrics: {iterations, ttotal_ms,
escalated, used_model}}`. `local` offers the sandboxed Python tool and `run_shell` allowing
`echo`; `http` the tools of the configured HTTP tool server at `tool_http_base_url`;
`echo` one model turn without tools.

A run offers its own tools and answers no logprobs: a caller's `tools`, `tool_choice`,
`functions`, `function_call`, `parallel_tool_calls`, `logprobs` or `top_logprobs` is
refused (400) rather than left unheeded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.agent.v1 import agent_pb2 as pb
from scillm.clients import openai_wire
from scillm.clients.errors import InvalidRequestError

from ._fields import duration, flag, whole

__all__ = ["request_from_envelope", "request_from_seed", "seed_reply", "text_field"]

_STOPPED = {pb.STOP_REASON_SUCCESS: "success", pb.STOP_REASON_BUDGET: "budget",
            pb.STOP_REASON_MAX_ITERATIONS: "max_iterations", pb.STOP_REASON_ERROR: "error"}
_BACKENDS = ("local", "http", "echo")
#: A completion's fields an agent run passes to each of its model calls.
_SAMPLING = ("response_format", "seed", "temperature", "top_p", "max_completion_tokens",
             "max_tokens", "stop", "presence_penalty", "frequency_penalty")
#: A completion's fields a run cannot honour (it offers its own tools, answers no
#: logprobs); given (other than false or empty), they are the caller's error.
_NOT_TAKEN = ("tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
              "logprobs", "top_logprobs")
#: The most stop sequences a model call takes (OpenAI's limit).
_MAX_STOPS = 4


def _int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    return None if value is None else whole(value, key)


def _strings(body: Mapping[str, Any], key: str) -> list[str]:
    value = body.get(key) or []
    if not isinstance(value, list):
        raise InvalidRequestError(f"'{key}' must be an array", param=key)
    return [str(x) for x in value]


def _headers(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key) or {}
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"'{key}' must be an object of header: value", param=key)
    return {str(k): str(v) for k, v in value.items()}


def text_field(body: Mapping[str, Any], name: str) -> str:
    """`body[name]`, a string ("" when absent or null): a model name given as a number or
    an object is refused, naming the field, rather than sent on as its text."""
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequestError(f"'{name}' must be a string", param=name)
    return value


def _base(body: Mapping[str, Any], model: str) -> pb.AgentRunRequest:
    """Messages, model, budgets and sampling: what both envelopes share."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
    if not model:
        raise InvalidRequestError("the agent needs a model: 'agent/<model>' or 'model'",
                                  param="model")
    for key in _NOT_TAKEN:
        if body.get(key) not in (None, False, []):
            raise InvalidRequestError(
                f"an agent run offers its own tools (languages, mcp_servers, "
                f"http_tool_servers) and answers no logprobs: '{key}' is not taken", param=key)
    probe = openai_wire.request_to_proto(
        {"model": model, "messages": messages, **{k: body[k] for k in _SAMPLING if k in body}})
    req = pb.AgentRunRequest(messages=probe.messages)
    c = req.config
    c.model = model
    c.max_iterations = _int(body, "max_iterations") or 0
    if body.get("max_total_seconds") is not None:
        c.max_total_time.CopyFrom(duration(body["max_total_seconds"], "max_total_seconds"))
    for key in ("enable_repair", "use_tools"):
        if body.get(key) is not None:
            setattr(c, key, flag(body, key))
    if probe.HasField("response_format"):
        c.response_format.CopyFrom(probe.response_format)
    if probe.HasField("seed"):
        c.seed = probe.seed
    if probe.HasField("temperature"):
        c.temperature = probe.temperature
    if probe.HasField("top_p"):
        if not 0.0 <= probe.top_p <= 1.0:
            raise InvalidRequestError("'top_p' must be between 0 and 1", param="top_p")
        c.top_p = probe.top_p
    # OpenAI's order of preference
    limit = "max_completion_tokens" if probe.HasField("max_completion_tokens") else \
        "max_tokens" if probe.HasField("max_tokens") else None
    if limit is not None:
        if getattr(probe, limit) < 1:
            raise InvalidRequestError(f"'{limit}' must be at least 1", param=limit)
        c.max_tokens = getattr(probe, limit)
    if len(probe.stop) > _MAX_STOPS or not all(probe.stop):
        raise InvalidRequestError(f"'stop' takes at most {_MAX_STOPS} sequences, none empty",
                                  param="stop")
    c.stop.extend(probe.stop)
    for key, given in (("presence_penalty", probe.HasField("presence_penalty")),
                       ("frequency_penalty", probe.HasField("frequency_penalty"))):
        if given:
            if not -2.0 <= getattr(probe, key) <= 2.0:
                raise InvalidRequestError(f"'{key}' must be between -2 and 2", param=key)
            setattr(c, key, getattr(probe, key))
    return req


def request_from_envelope(body: Mapping[str, Any], model: str) -> pb.AgentRunRequest:
    """An AgentRunRequest driving `model` from our envelope (see the module docstring)."""
    req = _base(body, model)
    c = req.config
    c.max_total_tokens = _int(body, "max_total_tokens") or 0
    c.auto_run_code = flag(body, "auto_run_code")
    c.languages.extend(_strings(body, "languages"))
    c.mcp_servers.extend(_strings(body, "mcp_servers"))
    c.mcp_servers_given = body.get("mcp_servers") is not None  # [] offers none
    if body.get("reasoning_effort"):
        c.reasoning_effort = str(body["reasoning_effort"])
    c.escalation_model = text_field(body, "escalation_model")
    c.escalation_iterations = _int(body, "escalation_iterations") or 0
    c.max_history_messages = _int(body, "max_history_messages") or 0
    c.max_history_chars = _int(body, "max_history_chars") or 0
    c.shell_allowlist.extend(_strings(body, "shell_allowlist"))
    c.shell_presets.extend(_strings(body, "shell_presets"))
    c.http_tool_servers.extend(_strings(body, "http_tool_servers"))
    c.http_tool_servers_given = body.get("http_tool_servers") is not None  # [] offers none
    c.http_tool_headers.update(_headers(body, "http_tool_headers"))
    c.trace = flag(body, "trace")
    scillm = body.get("scillm") or {}
    if isinstance(scillm, Mapping):
        req.context.session_id = str(scillm.get("session_id", ""))
        req.context.track = str(scillm.get("track", ""))
    return req


def request_from_seed(body: Mapping[str, Any]) -> pb.AgentRunRequest:
    """An AgentRunRequest from the seed's agent envelope (see the module docstring)."""
    backend = (text_field(body, "tool_backend") or "local").strip().lower()
    if backend not in _BACKENDS:
        raise InvalidRequestError(f"tool_backend {backend!r}: choose from "
                                  f"{', '.join(_BACKENDS)}", param="tool_backend")
    req = _base({"max_iterations": 3, **body}, text_field(body, "model"))
    c = req.config
    c.use_tools = flag(body, "use_tools") or backend == "http"
    c.auto_run_code = flag(body, "auto_run_code_on_code_block")
    if backend == "local":
        c.languages.append("python")
        c.shell_allowlist.append("echo")
    elif backend == "http":
        url = body.get("tool_http_base_url")
        if not isinstance(url, str) or not url:
            raise InvalidRequestError("tool_http_base_url is required with tool_backend http",
                                      param="tool_http_base_url")
        c.http_tool_servers.append(url)
        c.http_tool_headers.update(_headers(body, "tool_http_headers"))
    else:
        c.use_tools = False
        c.max_iterations = 1
    if body.get("escalate_on_budget_exceeded") and body.get("escalate_model"):
        c.escalation_model = text_field(body, "escalate_model")
    return req


def seed_reply(final: pb.AgentFinal, duration_ms: float) -> dict[str, Any]:
    """The seed agent app's reply to a run (`final_answer` only on success, as it did)."""
    success = final.stop_reason == pb.STOP_REASON_SUCCESS
    reply: dict[str, Any] = {
        "ok": final.stop_reason != pb.STOP_REASON_ERROR,
        "final_answer": final.answer if success else None,
        "stopped_reason": _STOPPED.get(final.stop_reason, "error"),
        "messages": [openai_wire.message_from_proto(m) for m in final.transcript],
        "metrics": {"iterations": final.metrics.iterations, "ttotal_ms": round(duration_ms, 3),
                    "escalated": final.metrics.escalated,
                    "used_model": final.metrics.used_model or final.manifest.model},
        "run_id": final.manifest.run_id,
    }
    if final.error:
        reply["error"] = final.error
    if final.trace_path:
        reply["trace_path"] = final.trace_path
    return reply

