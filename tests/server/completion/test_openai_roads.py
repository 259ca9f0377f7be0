"""`OpenAIProvider.complete`'s two roads give the same answers and the same errors.

The lean road (`PooledTransport.exchange`, taken when the provider's transport is a
`PooledTransport`) and httpx's road (taken here through a transport that offers a
`PooledTransport` by httpx's interface only, as a test's fake transport would) each call
the same real loopback upstream, reply by reply: plain, chunked and gzip bodies, error
statuses with Retry-After, broken JSON, a body cut short, a reply too slow. Streams
likewise: chunked and gzip SSE, an error status, a stream dropped midway, malformed or
in-band errors, a stream that ends unfinished. The request bytes each road sends are
compared too.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from completion_upstream import (
    Action,
    Upstream,
    _head,
    drop_mid_stream,
    malformed_sse,
    ok,
    openai_chunks,
    openai_reply,
    send_json,
    status,
)

from scillm.server.completion import CompletionSettings
from scillm.server.completion._openai import OpenAIProvider
from scillm.server.completion._provider import ProviderCall
from scillm.server.completion._transport import PooledTransport
from scillm.server.completion._types import Routing

BODY = {"messages": [{"role": "user", "content": "hi there"}], "max_tokens": 8}


def _raw(head: dict[str, str], body: bytes, code: int = 200, *, cut: int | None = None,
         chunked: bool = False) -> Action:
    """A reply written as given: `cut` bytes of the body then a close; `chunked` in two."""
    async def act(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                  w: asyncio.StreamWriter) -> bool:
        if chunked:
            half = len(body) // 2
            w.write(_head(code, {**head, "transfer-encoding": "chunked"}))
            for part in (body[:half], body[half:]):
                w.write(b"%x\r\n%s\r\n" % (len(part), part))
            w.write(b"0\r\n\r\n")
            return True
        w.write(_head(code, {**head, "content-length": str(len(body))}))
        w.write(body if cut is None else body[:cut])
        return cut is None
    return act


def _json(req: dict[str, Any]) -> bytes:
    return json.dumps(openai_reply(req)).encode()


def _encoded(req: dict[str, Any]) -> Action:
    return _raw({"content-type": "application/json", "content-encoding": "gzip"},
                gzip.compress(_json(req)))


async def _late(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                w: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(2)
    send_json(w, 200, openai_reply(req))
    return True


async def _not_http(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                    w: asyncio.StreamWriter) -> bool:
    w.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n{}")  # something else listens there
    return True


def _plain(req: dict[str, Any]) -> Action:
    return _raw({"content-type": "application/json"}, _json(req))


def _chunked(req: dict[str, Any]) -> Action:
    return _raw({"content-type": "application/json"}, _json(req), chunked=True)


def _cut(req: dict[str, Any]) -> Action:
    return _raw({"content-type": "application/json"}, _json(req), cut=10)


REQ = {**BODY, "model": "up"}
REPLIES: dict[str, Action] = {
    "plain": _plain(REQ),
    "chunked": _chunked(REQ),
    "gzip": _encoded(REQ),
    "429 with Retry-After": status(429, {"retry-after": "3"},
                                   {"error": {"message": "slow down"}}),
    "400 context window": status(400, None, {"error": {"message": "too long",
                                                       "code": "context_length_exceeded"}}),
    "401": status(401),
    "500 not JSON": _raw({"content-type": "text/plain"}, b"upstream fell over", 500),
    "invalid JSON": _raw({"content-type": "application/json"}, b"{this is not json"),
    "not a completion": _raw({"content-type": "application/json"}, b'{"choices": 3}'),
    "body cut short": _cut(REQ),
    "too slow": _late,
    "not HTTP at all": _not_http,
}


class _HttpxOnly(httpx.AsyncBaseTransport):
    """A `PooledTransport` behind httpx's transport interface and nothing else."""

    def __init__(self) -> None:
        self._inner = PooledTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def roads(upstream: Upstream) -> AsyncIterator[dict[str, OpenAIProvider]]:
    providers = {"lean": OpenAIProvider(), "httpx": OpenAIProvider(_HttpxOnly())}
    yield providers
    for provider in providers.values():
        await provider.close()


def _call(upstream: Upstream, timeout_s: float = 5.0) -> ProviderCall:
    settings = CompletionSettings.from_mapping({"model_list": [{
        "model_name": "m", "litellm_params": {
            "model": "openai/up", "api_base": f"{upstream.url}/v1", "api_key": "sk-test",
            "extra_headers": {"x-team": "sci"}}}]}, environ={})
    return ProviderCall(settings.model_list[0], "up", BODY, timeout_s, Routing())


async def _outcome(provider: OpenAIProvider, call: ProviderCall) -> tuple[str, Any]:
    try:
        return "reply", await provider.complete(call)
    except Exception as exc:  # the error is the outcome compared
        return type(exc).__name__, {
            "message": str(exc), "status": getattr(exc, "status", None),
            "retry_after_s": getattr(exc, "retry_after_s", None)}


@pytest.mark.parametrize("name", list(REPLIES))
async def test_both_roads_answer_alike(name: str, upstream: Upstream,
                                       roads: dict[str, OpenAIProvider]) -> None:
    upstream.plan("up", REPLIES[name])
    call = _call(upstream, timeout_s=0.5 if name == "too slow" else 5.0)
    lean = await _outcome(roads["lean"], call)
    via_httpx = await _outcome(roads["httpx"], call)
    assert lean == via_httpx
    if name in ("plain", "chunked", "gzip"):
        assert lean[0] == "reply" and lean[1]["choices"][0]["message"]["content"] == "hi there"
    else:
        assert lean[0] != "reply"


async def test_both_roads_send_the_same_request(upstream: Upstream,
                                                roads: dict[str, OpenAIProvider]) -> None:
    call = _call(upstream)
    assert roads["lean"]._pool.lean(f"{upstream.url}/v1") is not None  # the road it names
    assert roads["httpx"]._pool.lean(f"{upstream.url}/v1") is None
    await roads["lean"].complete(call)
    await roads["httpx"].complete(call)
    (path_a, headers_a, body_a), (path_b, headers_b, body_b) = upstream.requests
    assert (path_a, headers_a, body_a) == (path_b, headers_b, body_b)
    assert headers_a["authorization"] == "Bearer sk-test" and headers_a["x-team"] == "sci"
    assert body_a == {**BODY, "model": "up"}


async def test_the_lean_road_reuses_its_connection(upstream: Upstream,
                                                   roads: dict[str, OpenAIProvider]) -> None:
    call = _call(upstream)
    for _ in range(3):
        await roads["lean"].complete(call)
    assert upstream.connections == 1


def _sse(events: list[str], *, gzipped: bool = False, done: bool = True) -> Action:
    """An SSE reply of `events` (then `[DONE]`), chunked, or gzip with a length."""
    raw = "".join(f"data: {e}\n\n" for e in [*events, *(["[DONE]"] if done else [])]).encode()
    if gzipped:
        return _raw({"content-type": "text/event-stream", "content-encoding": "gzip"},
                    gzip.compress(raw))
    return _raw({"content-type": "text/event-stream"}, raw, chunked=True)


STREAM_REQ = {**REQ, "stream": True}
STREAMS: dict[str, Action] = {
    "chunked": ok,
    "gzip": _sse(openai_chunks(STREAM_REQ), gzipped=True),
    "429": status(429, {"retry-after": "2"}, {"error": {"message": "slow down"}}),
    "dropped midway": drop_mid_stream,
    "malformed": malformed_sse,
    "in-band error": _sse([json.dumps({"error": {"message": "overloaded"}})]),
    "ends unfinished": _sse(openai_chunks(STREAM_REQ)[:2], done=False),
}


async def _streamed(provider: OpenAIProvider, call: ProviderCall) -> tuple[list[Any], Any]:
    chunks: list[Any] = []
    try:
        async for chunk in provider.stream(call):
            chunks.append(chunk)
    except Exception as exc:  # the error is part of the outcome compared
        return chunks, (type(exc).__name__, str(exc), getattr(exc, "status", None),
                        getattr(exc, "retry_after_s", None))
    return chunks, None


@pytest.mark.parametrize("name", list(STREAMS))
async def test_both_roads_stream_alike(name: str, upstream: Upstream,
                                       roads: dict[str, OpenAIProvider]) -> None:
    upstream.plan("up", STREAMS[name])
    call = _call(upstream)
    lean = await _streamed(roads["lean"], call)
    via_httpx = await _streamed(roads["httpx"], call)
    assert lean == via_httpx
    if name in ("chunked", "gzip"):
        assert lean[1] is None and "".join(
            c["choices"][0]["delta"].get("content") or "" for c in lean[0] if c["choices"]
        ) == "hi there"
    else:
        assert lean[1] is not None


async def test_a_stream_closed_early_drops_its_connection(
        upstream: Upstream, roads: dict[str, OpenAIProvider]) -> None:
    """The caller stops after the first chunk: the upstream sees the connection close
    (the lean road's body stream is closed as httpx's response would be)."""
    async def endless(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                      w: asyncio.StreamWriter) -> bool:
        w.write(_head(200, {"content-type": "text/event-stream",
                            "transfer-encoding": "chunked"}))
        event = b"data: %s\n\n" % openai_chunks(req)[0].encode()
        try:
            while True:
                w.write(b"%x\r\n%s\r\n" % (len(event), event))
                await w.drain()
                await asyncio.sleep(0.01)
        except ConnectionError:
            up.disconnected.set()
        return False

    upstream.plan("up", endless)
    stream = roads["lean"].stream(_call(upstream))
    assert (await anext(stream))["choices"][0]["delta"]["role"] == "assistant"
    await stream.aclose()
    await asyncio.wait_for(upstream.disconnected.wait(), 5)
