"""Streamed text completions on the loopback upstream (`completion_upstream.Upstream`):
OpenAI's `POST /completions` with `"stream": true` as api.openai.com writes it (SSE
`text_completion` chunks, the usage in a last chunk with no choices when
`stream_options.include_usage` asks, then `data: [DONE]`), and its faults."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from completion_upstream import (
    Action,
    Upstream,
    openai_text_completion,
    send_json,
    sse_event,
    sse_head,
)


def text_chunks(req: dict[str, Any], *, pieces: int = 2) -> list[str]:
    """`openai_text_completion`'s choices as OpenAI streams them: each choice's text in
    `pieces` parts, the choices interleaved, then a finishing chunk per choice (text "",
    finish_reason), then the usage alone when asked for."""
    whole = openai_text_completion(req)
    base = {"id": "cmpl-up1", "object": "text_completion", "created": 7,
            "model": req["model"], "system_fingerprint": None}
    choices = sorted(whole["choices"], key=lambda c: c["index"])
    out: list[dict[str, Any]] = []
    for part in range(pieces):
        for choice in choices:
            text = choice["text"]
            size = -(-len(text) // pieces)
            out.append({**base, "choices": [{"text": text[part * size:(part + 1) * size],
                                             "index": choice["index"], "logprobs": None,
                                             "finish_reason": None}]})
    out += [{**base, "choices": [{"text": "", "index": c["index"], "logprobs": None,
                                  "finish_reason": c["finish_reason"]}]} for c in choices]
    if (req.get("stream_options") or {}).get("include_usage"):
        out.append({**base, "choices": [], "usage": whole["usage"]})
    return [json.dumps(c) for c in out]


def _send(w: asyncio.StreamWriter, events: list[str], *, done: bool = True) -> None:
    sse_head(w)
    for data in events + (["[DONE]"] if done else []):
        sse_event(w, data)
    if done:
        w.write(b"0\r\n\r\n")


async def text_stream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                      w: asyncio.StreamWriter) -> bool:
    """A well-behaved OpenAI completions endpoint, streamed or not."""
    if not req.get("stream"):
        send_json(w, 200, openai_text_completion(req))
        return True
    _send(w, text_chunks(req))
    return True


async def text_stream_cut(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                          w: asyncio.StreamWriter) -> bool:
    """The first chunk, then the connection closes: no finish, no [DONE]."""
    _send(w, text_chunks(req)[:1], done=False)
    await w.drain()
    return False


def text_stream_then(event: Any) -> Action:
    """The first chunk, then `event` (an in-band error, a chunk of the wrong shape)."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        _send(w, [*text_chunks(req)[:1], json.dumps(event)])
        return True
    return act


def text_stream_of(events: list[Any]) -> Action:
    """A stream of exactly `events` (JSON values), then [DONE]."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        _send(w, [e if isinstance(e, str) else json.dumps(e) for e in events])
        return True
    return act


async def text_stream_endless(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                              w: asyncio.StreamWriter) -> bool:
    """A chunk every 20 ms until the client goes away; then `up.disconnected` is set."""
    sse_head(w)
    chunk = text_chunks(req)[0]
    try:
        while True:
            sse_event(w, chunk)
            await w.drain()
            try:
                data = await asyncio.wait_for(r.read(1), 0.02)
            except TimeoutError:
                continue
            if not data:
                break
    except ConnectionError:
        pass
    up.disconnected.set()
    return False
