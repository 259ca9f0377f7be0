"""A completion answered from the response cache costs nothing upstream, and a virtual key
pays nothing for it (as LiteLLM's proxy charges a cache hit nothing): before, the key was
charged the cached reply's usage at full price (or, for a cached reply without a usage,
the estimate), its tokens counted against its tokens per minute, and a caller leaving a
replayed stream was charged the estimate. The reply still reports its usage, and says it
was a cache hit (`routing.cache_hit`). Through a real mesh with keys and the in-memory
cache on: the OpenAI door with the openai SDK, and gRPC; a loopback upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from completion_upstream import (
    Upstream,
    openai_chunks,
    openai_reply,
    send_json,
    sse_event,
    sse_head,
)
from keyed import key_spend, new_key
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.clients import ScillmClient

MASTER = "sk-master-cache-charges"
#: Prices per token: a spend reads back as tokens (prompt at 1, completion at 1000).
PRICE_IN, PRICE_OUT = 1.0, 1000.0
#: What the upstream's answers report: 3 prompt and 2 completion tokens.
COST = 3 * PRICE_IN + 2 * PRICE_OUT
PROMPT = "twelve chars"  # 12 characters: 3 tokens
ANSWER = "one two three four five"  # 23 characters: 6 tokens
#: A replayed stream far larger than what gRPC lets a server send ahead of its reader.
BIG_CHUNKS, BIG_CHUNK_CHARS = 256, 128 * 1024


async def _no_usage(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                    w: asyncio.StreamWriter) -> bool:
    """An answer or a stream from an upstream that reports no usage."""
    if not req.get("stream"):
        answer = openai_reply(req, ANSWER)
        del answer["usage"]
        send_json(w, 200, answer)
        return True
    sse_head(w)
    for data in [*openai_chunks(req, ANSWER)[:-1], "[DONE]"]:
        sse_event(w, data)
    w.write(b"0\r\n\r\n")
    return True


async def _big_stream(up: Upstream, req: dict[str, Any], r: asyncio.StreamReader,
                      w: asyncio.StreamWriter) -> bool:
    """A stream of BIG_CHUNKS chunks of BIG_CHUNK_CHARS characters each, then its usage."""
    base = {"id": "up-big", "object": "chat.completion.chunk", "created": 1,
            "model": req["model"]}
    piece = "x" * BIG_CHUNK_CHARS
    sse_head(w)
    for i in range(BIG_CHUNKS):
        sse_event(w, json.dumps({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                      "finish_reason": None}]}))
        if i % 16 == 0:
            await w.drain()
    for data in (json.dumps({**base, "choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "stop"}]}),
                 json.dumps({**base, "choices": [], "usage": {
                     "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}),
                 "[DONE]"):
        sse_event(w, data)
    w.write(b"0\r\n\r\n")
    return True


@pytest.fixture
def keyed(tmp_path: Path, upstream: Upstream) -> Iterator[RunningMesh]:
    upstream.plan("silent", _no_usage)
    upstream.plan("big", _big_stream)
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": name, "litellm_params": {
            "model": f"openai/{name}", "api_base": f"{upstream.url}/v1", "api_key": "x",
            "input_cost_per_token": PRICE_IN, "output_cost_per_token": PRICE_OUT}}
            for name in ("whole", "silent", "big")],
        "general_settings": {"master_key": MASTER},
        "litellm_settings": {"cache": True}}))
    running = start_mesh(mesh_settings(tmp_path, config_path=config,
                                       services=("completion", "agent")))
    yield running
    running.stop()


def _sdk(mesh: RunningMesh, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key=key, max_retries=0)


def _messages(text: str = PROMPT) -> Any:
    return [{"role": "user", "content": text}]


async def test_a_cache_hit_through_the_door_is_charged_nothing(keyed: RunningMesh,
                                                               upstream: Upstream) -> None:
    key = new_key(keyed, MASTER)
    async with _sdk(keyed, key) as sdk:
        first = await sdk.chat.completions.create(model="whole", messages=_messages())
        spent = await key_spend(keyed, MASTER, key, at_least=COST)
        again = await sdk.chat.completions.create(model="whole", messages=_messages())
        raw = await sdk.chat.completions.with_raw_response.create(model="whole",
                                                                  messages=_messages())
    assert upstream.calls("whole") == 1  # the second and third were cache hits
    assert spent == COST
    assert again.choices[0].message.content == first.choices[0].message.content == PROMPT
    # The reply still reports the usage it carries, and says where it came from.
    assert again.usage is not None and (again.usage.prompt_tokens,
                                        again.usage.completion_tokens) == (3, 2)
    assert json.loads(raw.text)["scillm"]["routing"]["cache_hit"] is True
    assert await key_spend(keyed, MASTER, key, settle=0.5) == COST


async def test_a_services_model_call_the_cache_answers_is_charged_nothing(
        keyed: RunningMesh, upstream: Upstream) -> None:
    """An agent run's model call is charged to the caller's key by the service
    (`CompletionLink`), not by the interceptor: the second run's call, a cache hit, was
    charged the cached usage at full price."""
    key = new_key(keyed, MASTER)
    async with _sdk(keyed, key) as sdk:
        await sdk.chat.completions.create(model="agent/whole", messages=_messages("agent"))
        spent = await key_spend(keyed, MASTER, key, at_least=COST)
        await sdk.chat.completions.create(model="agent/whole", messages=_messages("agent"))
    assert upstream.calls("whole") == 1  # the second run's call was a cache hit
    assert await key_spend(keyed, MASTER, key, settle=0.5) == spent


async def test_a_replayed_stream_is_charged_nothing_over_grpc(keyed: RunningMesh,
                                                              upstream: Upstream) -> None:
    key = new_key(keyed, MASTER)
    request = {"model": "whole", "messages": _messages("a stream")}
    ends = []
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        for _ in range(3):
            async for event in client.completion.stream(request):
                if event.HasField("end"):
                    ends.append(event.end)
            if len(ends) == 1:  # the first stream's usage is charged before the next
                await key_spend(keyed, MASTER, key, at_least=COST)
        whole = await client.completion.create({**request, "messages": _messages("whole")})
        hit = await client.completion.create({**request, "messages": _messages("whole")})
    assert upstream.calls("whole") == 2
    assert [e.routing.cache_hit for e in ends] == [False, True, True]
    assert {(e.usage.prompt_tokens, e.usage.completion_tokens) for e in ends} == {(3, 2)}
    assert (whole.routing.cache_hit, hit.routing.cache_hit) == (False, True)
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens) == (3, 2)
    assert await key_spend(keyed, MASTER, key, settle=0.5) == 2 * COST


async def test_a_cached_reply_without_a_usage_is_not_charged_an_estimate(
        keyed: RunningMesh, upstream: Upstream) -> None:
    """The upstream reported no usage: the first call pays the estimate (3 prompt and 6
    completion tokens), the cache hits after it nothing, unary or streamed."""
    key = new_key(keyed, MASTER)
    estimate = 3 * PRICE_IN + 6 * PRICE_OUT
    async with _sdk(keyed, key) as sdk:
        for _ in range(2):
            reply = await sdk.chat.completions.create(model="silent", messages=_messages())
            assert reply.choices[0].message.content == ANSWER
        assert await key_spend(keyed, MASTER, key, at_least=estimate) == estimate
        for _ in range(2):
            stream = await sdk.chat.completions.create(model="silent", messages=_messages(),
                                                       stream=True)
            assert "".join([c.choices[0].delta.content or "" async for c in stream
                            if c.choices]) == ANSWER
        assert await key_spend(keyed, MASTER, key, at_least=2 * estimate) == 2 * estimate
    assert upstream.calls("silent") == 2  # one unary, one stream; the rest from the cache
    assert await key_spend(keyed, MASTER, key, settle=0.5) == 2 * estimate


async def test_cache_hits_use_none_of_the_keys_tokens_per_minute(
        keyed: RunningMesh, upstream: Upstream) -> None:
    """A key of 12 tokens a minute asks once (5 tokens) and is answered from the cache
    after: the hits count nothing, so the key is not stopped at its third call."""
    key = new_key(keyed, MASTER, tpm_limit=12)
    async with _sdk(keyed, key) as sdk:
        for _ in range(5):
            reply = await sdk.chat.completions.create(model="whole", messages=_messages())
            assert reply.choices[0].message.content == PROMPT
    assert upstream.calls("whole") == 1
    assert await key_spend(keyed, MASTER, key, settle=0.5) == COST


async def test_a_caller_leaving_a_replayed_stream_is_charged_nothing(
        keyed: RunningMesh, upstream: Upstream) -> None:
    """A stream replayed from the cache, left after its first chunk (long before its end,
    which says it was a cache hit): the key pays nothing, not the estimate of what was
    streamed so far."""
    request = {"model": "big", "messages": _messages("big")}
    async with ScillmClient(keyed.grpc_target, api_key=MASTER) as client:
        async for _ in client.completion.stream(request):  # stored in the cache
            pass
    key = new_key(keyed, MASTER)
    async with ScillmClient(keyed.grpc_target, api_key=key) as client:
        stream = client.completion.stream(request)
        async for event in stream:
            assert event.HasField("chunk")
            break
        await stream.aclose()  # type: ignore[attr-defined]
    assert upstream.calls("big") == 1
    assert await key_spend(keyed, MASTER, key, settle=1.0) == 0.0
