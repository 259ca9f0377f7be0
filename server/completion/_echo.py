"""The echo provider (`echo/<anything>`): deterministic replies for tests.

It replies with the text of the last user message. Tokens are whitespace-separated
words; `max_tokens` truncates (finish_reason "length"), `stop` cuts at the first stop
string, `n` repeats the choice. Prompt tokens are the words of all messages.

An answer is at most `MAX_TOKENS` words, as a model's is at most its context: the echo is
in the embedded defaults, and a 1 MiB prompt with `n: 128` was answered with 134 MB
(the mesh's peak memory grew by 400 MB), or streamed as 4 GB over four minutes.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncGenerator
from typing import Any

from ._provider import ProviderCall, completion_id, text_of

__all__ = ["MAX_TOKENS", "EchoProvider"]

#: The most words an answer holds (a model's context; the local Gemma's is 4,096 tokens).
MAX_TOKENS = 4096

_WORD = re.compile(r"\s*\S+")


class EchoProvider:
    """Replies with the last user message; see the module docstring."""

    name = "echo"

    async def complete(self, call: ProviderCall) -> dict[str, Any]:
        pieces, finish, usage = _reply(call)
        content = "".join(pieces)
        n = _n(call.body)
        return {
            "id": completion_id(), "object": "chat.completion", "created": int(time.time()),
            "model": f"echo/{call.model}",
            "choices": [{"index": i, "finish_reason": finish, "logprobs": None,
                         "message": {"role": "assistant", "content": content}}
                        for i in range(n)],
            "usage": usage,
        }

    async def stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        pieces, finish, usage = _reply(call)
        n = _n(call.body)
        cid, created = completion_id(), int(time.time())

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
            return {"id": cid, "object": "chat.completion.chunk", "created": created,
                    "model": f"echo/{call.model}", "choices": choices, **extra}

        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None} for i in range(n)])
        for piece in pieces:
            yield chunk([{"index": i, "delta": {"content": piece}, "finish_reason": None}
                         for i in range(n)])
        yield chunk([{"index": i, "delta": {}, "finish_reason": finish} for i in range(n)])
        yield chunk([], usage=usage)

    async def close(self) -> None:
        return None


def _n(body: dict[str, Any]) -> int:
    return int(body.get("n") or 1)


def _reply(call: ProviderCall) -> tuple[list[str], str, dict[str, int]]:
    body = call.body
    messages = body.get("messages") or ()
    prompt_tokens = sum(len(text_of(m.get("content")).split()) for m in messages)
    text = ""
    for message in reversed(messages):
        if message.get("role") == "user":
            text = text_of(message.get("content"))
            break
    stop = body.get("stop")
    finish = "stop"
    if stop:
        cuts = [i for s in ([stop] if isinstance(stop, str) else stop)
                if s and (i := text.find(s)) >= 0]
        if cuts:
            text = text[:min(cuts)]
    pieces = _WORD.findall(text)
    asked = body.get("max_completion_tokens") or body.get("max_tokens")
    limit = MAX_TOKENS if asked is None else min(int(asked), MAX_TOKENS)
    if len(pieces) > limit:
        pieces = pieces[:limit]
        finish = "length"
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
             "total_tokens": prompt_tokens + len(pieces)}
    return pieces, finish, usage
