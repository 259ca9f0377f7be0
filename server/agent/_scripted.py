"""A scripted model: replies read from a list or a JSON fixture, for tests and replays."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._history import estimate_tokens
from .errors import ModelError

__all__ = ["ScriptedModel"]


class ScriptedModel:
    """A deterministic `complete` callable that answers with scripted replies in order.

    A reply is either a whole `chat.completion` dict (it has `choices`) or a shorthand::

        {"content": "...", "tool_calls": [{"name": "add", "arguments": {"a": 1}, "id": "c1"}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2}}

    `arguments` may be a dict or a raw string (to script malformed JSON); `id` may be left
    out. Without `usage`, tokens are estimated from the request. With `cycle`, the script
    starts over when it runs out; otherwise running out raises ModelError.
    Every request is kept in `requests`.
    """

    def __init__(self, replies: Sequence[Mapping[str, Any]], *, cycle: bool = False) -> None:
        if not replies:
            raise ValueError("a script needs at least one reply")
        self._replies = [dict(r) for r in replies]
        self._cycle = cycle
        self._next = 0
        self.requests: list[dict[str, Any]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedModel:
        """Read `{"replies": [...], "cycle": false}` from a JSON file."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(data["replies"], cycle=bool(data.get("cycle", False)))

    @classmethod
    def from_transcript(cls, transcript: Sequence[Mapping[str, Any]]) -> ScriptedModel:
        """Replay the assistant turns of a stored transcript, in order."""
        replies = [{"message": dict(m)} for m in transcript if m.get("role") == "assistant"]
        return cls(replies)

    async def __call__(self, request: dict[str, Any]) -> dict[str, Any]:
        self.requests.append(json.loads(json.dumps(request)))
        if self._next >= len(self._replies):
            if not self._cycle:
                raise ModelError(f"the script has no reply #{self._next + 1}")
            self._next = 0
        reply = self._replies[self._next]
        self._next += 1
        return completion(reply, request, len(self.requests))


def completion(reply: Mapping[str, Any], request: Mapping[str, Any], n: int) -> dict[str, Any]:
    """A `chat.completion` dict for a shorthand reply (deterministic ids, no timestamps)."""
    if "choices" in reply:
        return dict(reply)
    if "message" in reply:
        message = dict(reply["message"])
    else:
        message = {"role": "assistant", "content": reply.get("content")}
        calls = []
        for call in reply.get("tool_calls") or ():
            arguments = call.get("arguments", {})
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, sort_keys=True)
            wire: dict[str, Any] = {"type": "function",
                                    "function": {"name": call["name"], "arguments": arguments}}
            if call.get("id"):
                wire["id"] = call["id"]
            calls.append(wire)
        if calls:
            message["tool_calls"] = calls
    usage = dict(reply.get("usage") or {})
    if not usage:
        prompt = sum(estimate_tokens(m) for m in request.get("messages", ()))
        usage = {"prompt_tokens": prompt, "completion_tokens": estimate_tokens(message)}
    usage.setdefault("total_tokens", usage.get("prompt_tokens", 0)
                     + usage.get("completion_tokens", 0))
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {"id": f"chatcmpl-scripted-{n}", "object": "chat.completion", "created": 0,
            "model": str(request.get("model") or "scripted"),
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage}
