"""The Codex CLI's `codex exec --json` event stream, read line by line.

Each stdout line is one JSON object with a `type` (codex-rs/exec/src/exec_events.rs):

    {"type": "thread.started", "thread_id": "..."}
    {"type": "turn.started"}
    {"type": "item.started" | "item.updated" | "item.completed",
     "item": {"id": "item_0", "type": "reasoning" | "agent_message" | "command_execution"
              | "file_change" | "mcp_tool_call" | "web_search" | "todo_list" | "error",
              "text": "...", ...}}
    {"type": "turn.completed", "usage": {"input_tokens", "cached_input_tokens",
                                          "output_tokens"}}
    {"type": "turn.failed", "error": {"message": "..."}}
    {"type": "error", "message": "..."}

A chat completion takes the completed `reasoning` items (as `reasoning_content`) and the
last completed `agent_message` (as `content`). Lines that are not JSON objects (a partial
line, a banner, a stray print) are counted in `malformed` and skipped, as are events and
items of kinds this reader does not know.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["CodexTurn", "no_credentials"]


@dataclass
class CodexTurn:
    """What one `codex exec --json` run reported."""

    thread_id: str = ""
    reasoning: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    #: Messages of `error` events and `error` items, in order.
    errors: list[str] = field(default_factory=list)
    #: The message of `turn.failed`, when the turn failed.
    failed: str | None = None
    completed: bool = False
    malformed: int = 0

    @property
    def answer(self) -> str | None:
        """The last agent message, or None when the agent sent none."""
        return self.messages[-1] if self.messages else None

    def feed(self, line: bytes | str) -> str | None:
        """Take one stdout line; return the text of a reasoning item it completed."""
        event = _parse(line)
        if event is None:
            if line.strip():
                self.malformed += 1
            return None
        kind = event.get("type")
        if kind == "thread.started":
            self.thread_id = str(event.get("thread_id") or "")
        elif kind == "item.completed":
            return self._item(event.get("item"))
        elif kind == "turn.completed":
            self.completed = True
            self.usage = _usage(event.get("usage"))
        elif kind == "turn.failed":
            error = event.get("error")
            self.failed = _text(error.get("message") if isinstance(error, dict) else error)
        elif kind == "error":
            self.errors.append(_text(event.get("message")))
        return None

    def _item(self, item: Any) -> str | None:
        if not isinstance(item, dict):
            self.malformed += 1
            return None
        kind, text = item.get("type"), item.get("text")
        if kind == "error":
            self.errors.append(_text(item.get("message")))
        elif not isinstance(text, str) or not text.strip():
            return None
        elif kind == "agent_message":
            self.messages.append(text)
        elif kind == "reasoning":
            self.reasoning.append(text)
            return text
        return None

    def failure(self) -> str:
        """The CLI's own account of a failure: turn.failed, else the last error event."""
        return self.failed or (self.errors[-1] if self.errors else "")


def _parse(line: bytes | str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _usage(value: Any) -> dict[str, Any] | None:
    if not isinstance(value, dict):
        return None

    def count(key: str) -> int:
        number = value.get(key)
        return number if isinstance(number, int) and not isinstance(number, bool) else 0

    prompt, completion = count("input_tokens"), count("output_tokens")
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": count("cached_input_tokens")}}


#: How the CLI says it has no usable credentials. It reports an upstream 401 in an
#: `error`/`turn.failed` message ("unexpected status 401 Unauthorized: ...") and a missing
#: login on stderr; it has no structured code for either, so its text is all there is.
_NO_CREDENTIALS = re.compile(
    r"\b401\b|unauthori[sz]ed|not logged in|codex login|missing bearer|invalid api key|"
    r"no credentials", re.IGNORECASE)


def no_credentials(turn: CodexTurn, stderr: str) -> str | None:
    """The CLI's message saying it has no (or refused) credentials, if it said so."""
    for message in (turn.failed or "", *turn.errors, *stderr.splitlines()):
        if _NO_CREDENTIALS.search(message):
            return message.strip()
    return None
