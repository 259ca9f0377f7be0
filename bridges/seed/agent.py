"""The seed's agent envelope <-> AgentRunRequest.

Accepted by `POST /agent/run`, and by `/v1/chat/completions` with an `agent/<model>` name:

    {"messages": [...], "model": "<completion model>", "max_iterations": 8,
     "max_total_seconds": 60, "enable_repair": true, "use_tools": true,
     "languages"?: ["python"], "mcp_servers"?: ["name"], "seed"?: 7, "temperature"?: 0,
     "response_format"?: {...}, "reasoning_effort"?: "low", "auto_run_code"?: false}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scillm.agent.v1 import agent_pb2 as pb
from scillm.clients import openai_wire
from scillm.clients.errors import InvalidRequestError

__all__ = ["request_from_envelope"]


def _int(body: Mapping[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequestError(f"'{key}' must be a non-negative number", param=key)
    return int(value)


def request_from_envelope(body: Mapping[str, Any], model: str) -> pb.AgentRunRequest:
    """An AgentRunRequest driving `model` (see the module docstring)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", param="messages")
    if not model:
        raise InvalidRequestError("the agent needs a model: 'agent/<model>' or 'model'",
                                  param="model")
    probe = openai_wire.request_to_proto(
        {"model": model, "messages": messages,
         **{k: body[k] for k in ("response_format", "seed", "temperature") if k in body}})
    req = pb.AgentRunRequest(messages=probe.messages)
    c = req.config
    c.model = model
    c.max_iterations = _int(body, "max_iterations") or 0
    seconds = body.get("max_total_seconds")
    if seconds is not None:
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
            raise InvalidRequestError("'max_total_seconds' must be a positive number",
                                      param="max_total_seconds")
        c.max_total_time.FromNanoseconds(int(seconds * 1e9))
    c.max_total_tokens = _int(body, "max_total_tokens") or 0
    for key in ("enable_repair", "use_tools"):
        if key in body:
            setattr(c, key, bool(body[key]))
    c.auto_run_code = bool(body.get("auto_run_code", False))
    c.languages.extend(str(x) for x in body.get("languages") or [])
    c.mcp_servers.extend(str(x) for x in body.get("mcp_servers") or [])
    if probe.HasField("response_format"):
        c.response_format.CopyFrom(probe.response_format)
    if body.get("reasoning_effort"):
        c.reasoning_effort = str(body["reasoning_effort"])
    if probe.HasField("seed"):
        c.seed = probe.seed
    if probe.HasField("temperature"):
        c.temperature = probe.temperature
    scillm = body.get("scillm") or {}
    if isinstance(scillm, Mapping):
        req.context.session_id = str(scillm.get("session_id", ""))
        req.context.track = str(scillm.get("track", ""))
    return req
