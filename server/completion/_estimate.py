"""Tokens estimated from text, for a call whose upstream usage never reached the caller.

A virtual key is charged the usage a call ends with. A caller who leaves a stream after the
text and before its last message, or an upstream that reports no usage, would leave the
key charged nothing; the Completion servicer keeps this estimate as a stream goes (and
makes it for an answer without usage: `charges.report_usage_estimate`), and the key is
charged it instead. The rule is OpenAI's rule of thumb, a token per four characters: of
the prompt's messages (text parts, tool call arguments), and of the answer (content,
reasoning, refusal, tool call names and arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["CHARS_PER_TOKEN", "answer_chars", "chunk_chars", "estimated_usage", "prompt_chars",
           "tokens"]

CHARS_PER_TOKEN = 4
_DELTA_TEXT = ("content", "reasoning_content", "refusal")


def tokens(chars: int) -> int:
    """Tokens for `chars` characters (rounded up)."""
    return -(-chars // CHARS_PER_TOKEN)


def _calls(calls: Any) -> int:
    total = 0
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(function, Mapping):
            total += sum(len(v) for k in ("name", "arguments")
                         if isinstance(v := function.get(k), str))
    return total


def prompt_chars(body: Mapping[str, Any]) -> int:
    """Characters of a request's messages."""
    total = 0
    for message in body.get("messages") or ():
        if not isinstance(message, Mapping):
            continue
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(text) for part in content if isinstance(part, Mapping)
                         and isinstance(text := part.get("text"), str))
        total += _calls(message.get("tool_calls"))
    return total


def chunk_chars(chunk: Mapping[str, Any]) -> int:
    """Characters a streamed chunk adds to the answer."""
    return _choices_chars(chunk, "delta")


def answer_chars(response: Mapping[str, Any]) -> int:
    """Characters of a whole (unary) answer."""
    return _choices_chars(response, "message")


def _choices_chars(reply: Mapping[str, Any], part: str) -> int:
    total = 0
    for choice in reply.get("choices") or ():
        said = choice.get(part) if isinstance(choice, Mapping) else None
        if isinstance(said, Mapping):
            total += sum(len(v) for k in _DELTA_TEXT if isinstance(v := said.get(k), str))
            total += _calls(said.get("tool_calls"))
    return total


def estimated_usage(request: Mapping[str, Any], response: Mapping[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens estimated for a whole answer to `request`."""
    return tokens(prompt_chars(request)), tokens(answer_chars(response))
