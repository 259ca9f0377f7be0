"""The echo provider (`echo/<anything>`): deterministic replies for tests.

It replies with the text of the last user message. Tokens are whitespace-separated
words; `max_tokens` truncates (finish_reason "length"), `stop` cuts at the first stop
string, `n` repeats the choice. Prompt tokens are the words of all messages; completion tokens
the words of every choice (OpenAI counts each of the n answers).

Embeddings (`embed`) are deterministic unit vectors derived from each input's bytes (its
text, or its token ids): the same input always gets the same vector, another input another
one. They have `DIMENSIONS` numbers, or the request's `dimensions` (at most
`MAX_DIMENSIONS`); an input's tokens are its words, or its token ids. A reply holds at most
`MAX_VALUES` numbers (inputs x dimensions): 2048 inputs of 3,072 numbers took the event
loop ~1.5 s to make, and seconds more to convert (a 134 MB answer), while /healthz waited.
More than `_INLINE_VALUES` are made in a worker thread (it gives the loop the GIL between
vectors), and they are written as OpenAI's base64 (the reader's C path), not as floats.

An answer is at most `MAX_TOKENS` words, as a model's is at most its context: the echo is
in the embedded defaults, and a 1 MiB prompt with `n: 128` was answered with 134 MB
(the mesh's peak memory grew by 400 MB), or streamed as 4 GB over four minutes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import sys
import time
from array import array
from collections.abc import AsyncGenerator
from typing import Any

from ._provider import ProviderCall, completion_id, text_of
from .errors import InvalidRequest

__all__ = ["DIMENSIONS", "MAX_DIMENSIONS", "MAX_TOKENS", "MAX_VALUES", "EchoProvider",
           "echo_vector"]

#: The most words an answer holds (a model's context; the local Gemma's is 4,096 tokens).
MAX_TOKENS = 4096

_WORD = re.compile(r"\s*\S+")
#: The length of an echo embedding unless the request asks for another.
DIMENSIONS = 16
#: The longest echo embedding (OpenAI's largest model has 3,072 dimensions).
MAX_DIMENSIONS = 3072
#: The most numbers one echo reply holds, all vectors together (inputs x dimensions):
#: 4 MiB of float32s, e.g. 2048 inputs of 512 numbers or 341 inputs of 3,072.
MAX_VALUES = 1024 * 1024
#: The most numbers an echo reply makes on the event loop (~10 ms); more are made in a
#: worker thread (at `MAX_VALUES`, ~170 ms inline).
_INLINE_VALUES = 64 * 1024


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

    async def embed(self, call: ProviderCall) -> dict[str, Any]:
        """OpenAI's embeddings list, a vector per input (see the module docstring)."""
        body = call.body
        size = body.get("dimensions") or DIMENSIONS
        if size > MAX_DIMENSIONS:
            raise InvalidRequest(f"echo embeddings have at most {MAX_DIMENSIONS} dimensions",
                                 param="dimensions")
        inputs = body["input"]
        if len(inputs) * size > MAX_VALUES:
            raise InvalidRequest(
                f"{len(inputs)} inputs of {size} dimensions are {len(inputs) * size:,} "
                f"numbers; an echo reply holds at most {MAX_VALUES:,} (inputs x dimensions): "
                "ask for fewer dimensions or inputs",
                param="dimensions" if body.get("dimensions") else "input")
        tokens = sum(len(i.split()) if isinstance(i, str) else len(i) for i in inputs)
        data = (await asyncio.to_thread(_vectors, inputs, size)
                if len(inputs) * size > _INLINE_VALUES else _vectors(inputs, size))
        return {"object": "list", "model": f"echo/{call.model}", "data": data,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    async def text_complete(self, call: ProviderCall) -> dict[str, Any]:
        """OpenAI's `text_completion`: the prompt's own words (`_text.echo_reply`)."""
        from ._text import echo_reply

        return echo_reply(call.body, call.model)

    async def text_stream(self, call: ProviderCall) -> AsyncGenerator[dict[str, Any], None]:
        """`text_complete`'s texts streamed word by word (`_text.echo_chunks`)."""
        from ._text import echo_chunks

        for chunk in echo_chunks(call.body, call.model):
            yield chunk

    async def close(self) -> None:
        return None


def echo_vector(item: str | list[int], size: int) -> array[float]:
    """The echo embedding of one input: SHAKE-256 of its bytes as `size` numbers in
    [-1, 1), scaled to length 1 (as OpenAI's are)."""
    data = item.encode("utf-8", "surrogatepass") if isinstance(item, str) \
        else b"ids:" + ",".join(map(str, item)).encode()
    words = array("I")
    words.frombytes(hashlib.shake_256(data).digest(4 * size))
    if sys.byteorder == "big":  # the same vectors on every machine
        words.byteswap()
    values = [w / 2147483648.0 - 1.0 for w in words]
    norm = math.sqrt(math.fsum(v * v for v in values)) or 1.0
    return array("f", [v / norm for v in values])


def _vectors(inputs: list[str | list[int]], size: int) -> list[dict[str, Any]]:
    """OpenAI's `data` of the echo embeddings of `inputs`, as base64."""
    return [{"object": "embedding", "index": i, "embedding": _base64(echo_vector(item, size))}
            for i, item in enumerate(inputs)]


def _base64(vector: array[float]) -> str:
    """OpenAI's base64 of a vector: its little-endian float32 bytes."""
    if sys.byteorder == "big":
        vector = array("f", vector)
        vector.byteswap()
    return base64.b64encode(vector.tobytes()).decode("ascii")


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
    answered = len(pieces) * _n(body)  # every answer's tokens, as OpenAI counts n of them
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": answered,
             "total_tokens": prompt_tokens + answered}
    return pieces, finish, usage
