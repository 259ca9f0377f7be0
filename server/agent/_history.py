"""Conversation history: token estimates, pruning to a budget, fenced code blocks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..fences import fenced_blocks
from ._records import Message

__all__ = ["estimate_tokens", "find_code_block", "prune_history"]

#: Rough characters per token of English text and code.
_CHARS_PER_TOKEN = 4
#: Per-message overhead (role, separators).
_MESSAGE_OVERHEAD = 4



def _size(message: Message) -> int:
    """Characters of a message's content and tool calls."""
    size = len(str(message.get("content") or ""))
    if message.get("tool_calls"):
        size += len(json.dumps(message["tool_calls"], sort_keys=True))
    return size


def estimate_tokens(message: Message) -> int:
    """An estimate of the tokens a message takes (deterministic, model-independent)."""
    return _MESSAGE_OVERHEAD + (_size(message) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _units(messages: Sequence[Message]) -> list[list[int]]:
    """Indices grouped so an assistant tool-call turn stays with its tool results."""
    units: list[list[int]] = []
    for i, message in enumerate(messages):
        if message.get("role") == "tool" and units and _is_tool_unit(messages, units[-1]):
            units[-1].append(i)
        else:
            units.append([i])
    return units


def _is_tool_unit(messages: Sequence[Message], unit: list[int]) -> bool:
    head = messages[unit[0]]
    return head.get("role") == "assistant" and bool(head.get("tool_calls"))


@dataclass
class _Load:
    """What the kept messages add up to, against the caps."""

    tokens: int = 0
    chars: int = 0
    messages: int = 0

    def add(self, messages: Sequence[Message], unit: Sequence[int]) -> _Load:
        non_system = sum(1 for j in unit if messages[j].get("role") != "system")
        return _Load(self.tokens + sum(estimate_tokens(messages[j]) for j in unit),
                     self.chars + sum(_size(messages[j]) for j in unit),
                     self.messages + non_system)


def prune_history(messages: Sequence[Message], budget: int, *,
                  max_messages: int | None = None,
                  max_chars: int | None = None) -> list[Message]:
    """The messages to send: within about `budget` tokens, at most `max_messages`
    non-system messages and `max_chars` characters of content.

    Always kept, even past the caps: system messages, the first user message (the task),
    the last assistant tool-call turn with its tool results, and the last message. Other
    turns are kept newest first while they fit; an assistant tool-call turn and its tool
    results are kept or dropped together, so no tool result loses its call. The order of
    the kept messages is unchanged.
    """
    total = _Load().add(messages, range(len(messages)))
    if total.tokens <= budget and (max_messages is None or total.messages <= max_messages) \
            and (max_chars is None or total.chars <= max_chars):
        return list(messages)
    units = _units(messages)
    keep: set[int] = set()
    first_user = next((i for i, u in enumerate(units)
                       if messages[u[0]].get("role") == "user"), None)
    last_tool = next((i for i in range(len(units) - 1, -1, -1)
                      if _is_tool_unit(messages, units[i])), None)
    for i, unit in enumerate(units):
        if messages[unit[0]].get("role") == "system" or i in (first_user, last_tool):
            keep.add(i)
    if units:
        keep.add(len(units) - 1)
    load = _Load()
    for i in keep:
        load = load.add(messages, units[i])
    for i in range(len(units) - 1, -1, -1):
        if i in keep:
            continue
        more = load.add(messages, units[i])
        if more.tokens > budget or (max_messages is not None and more.messages > max_messages) \
                or (max_chars is not None and more.chars > max_chars):
            break
        keep.add(i)
        load = more
    return [messages[j] for i in sorted(keep) for j in units[i]]


def find_code_block(text: str, tags: dict[str, str]) -> tuple[str, str] | None:
    """The first fenced block whose tag maps to a language in `tags`: (language, source)."""
    for tag, body in fenced_blocks(text):
        language = tags.get(tag.lower())
        if language is not None and body.strip():
            return language, body
    return None
