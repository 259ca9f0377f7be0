"""The sidecar's answers in OpenAI's shapes: a `chat.completion`, or its SSE chunks."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

from scillm.bridges.openai import sse

from ._cli import Reasoning
from ._events import CodexTurn
from .errors import SidecarError

__all__ = ["Reply", "error_json"]


def error_json(exc: SidecarError) -> dict[str, Any]:
    """OpenAI's error body for a sidecar error."""
    return {"error": {"message": exc.message, "type": exc.type, "param": exc.param,
                      "code": exc.code}}


def word_usage(prompt: str, answer: str) -> dict[str, int]:
    """Usage counted in words (echo mode)."""
    p, c = len(prompt.split()), len(answer.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


class Reply:
    """One answer's id, model and creation time, and the shapes it is sent in."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-codex-{uuid.uuid4().hex[:24]}"
        self.model = model
        self.created = int(time.time())

    def completion(self, content: str, usage: dict[str, Any] | None,
                   reasoning: list[str] | None = None) -> dict[str, Any]:
        """A whole `chat.completion`."""
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = "\n\n".join(reasoning)
        return {"id": self.id, "object": "chat.completion", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "message": message,
                                                  "finish_reason": "stop", "logprobs": None}],
                "usage": usage or word_usage("", content)}

    def chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return sse.event({"id": self.id, "object": "chat.completion.chunk",
                          "created": self.created, "model": self.model,
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    def ending(self, usage: dict[str, Any] | None, include_usage: bool) -> list[bytes]:
        """The finish chunk, the usage chunk when asked for, and `[DONE]`."""
        out = [self.chunk({}, "stop")]
        if include_usage:
            out.append(sse.event({"id": self.id, "object": "chat.completion.chunk",
                                  "created": self.created, "model": self.model,
                                  "choices": [], "usage": usage}))
        return [*out, sse.DONE]

    def echo_stream(self, text: str, usage: dict[str, Any],
                    include_usage: bool) -> list[bytes]:
        """A whole answer as SSE: the role, the text word by word, the ending."""
        words = text.split(" ")
        return [self.chunk({"role": "assistant", "content": ""}),
                *(self.chunk({"content": (" " if i else "") + w}) for i, w in enumerate(words)),
                *self.ending(usage, include_usage)]

    async def cli_stream(self, first: Reasoning | CodexTurn,
                         rest: AsyncGenerator[Reasoning | CodexTurn, None],
                         include_usage: bool) -> AsyncIterator[bytes]:
        """A CLI run as SSE: each reasoning item as `reasoning_content` when it completes,
        then the last agent message as `content`. A failure once the stream has started
        goes in-band as OpenAI's error body, then `[DONE]`."""
        yield self.chunk({"role": "assistant", "content": ""})
        separator = ""
        try:
            async with aclosing(rest):
                item: Reasoning | CodexTurn | None = first
                while item is not None:
                    if isinstance(item, CodexTurn):
                        yield self.chunk({"content": item.answer or ""})
                        for event in self.ending(item.usage, include_usage):
                            yield event
                        return
                    yield self.chunk({"reasoning_content": separator + item.text})
                    separator = "\n\n"
                    item = await anext(rest, None)
        except SidecarError as exc:
            yield sse.event(error_json(exc))
            yield sse.DONE
