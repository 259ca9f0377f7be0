"""The response cache: off unless configured (as in LiteLLM), LRU, TTL, max age, keys,
streams answered only by streams, the per-request controls, and a real redis-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from completion_upstream import Action, EngineFactory, Upstream, openai_reply, reply, send_json
from meshutil import RunningMesh, mesh_settings, start_mesh

from scillm.server.completion import (
    CompletionEngine,
    CompletionSettings,
    InvalidRequest,
    StreamChunk,
    StreamEnd,
)
from scillm.server.completion._cache import MemoryCache, ResponseCache, assemble

MSG = [{"role": "user", "content": "q"}]


def upstream_config(up: Upstream, **litellm: Any) -> dict[str, Any]:
    return {"model_list": [{"model_name": "m", "litellm_params": {
        "model": "openai/up", "api_base": f"{up.url}/v1", "api_key": "x"}}],
        "litellm_settings": litellm}


def text_of(done: Any) -> str:
    return str(done.response["choices"][0]["message"]["content"])


async def streamed(engine: CompletionEngine, request: dict[str, Any],
                   ) -> tuple[list[dict[str, Any]], StreamEnd]:
    events = [e async for e in engine.stream(request)]
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return [e.chunk for e in events if isinstance(e, StreamChunk)], end


async def test_memory_lru_and_ttl() -> None:
    now = [0.0]
    cache = MemoryCache(2, clock=lambda: now[0])
    await cache.set("a", b"1", None)
    await cache.set("b", b"2", 5)
    assert await cache.get("a") == b"1"
    await cache.set("c", b"3", None)  # evicts b, the least recently used
    assert await cache.get("b") is None and await cache.get("a") == b"1"
    await cache.set("d", b"4", 5)
    now[0] = 6
    assert await cache.get("d") is None


async def test_max_age_and_older_entries() -> None:
    wall = [100.0]
    backend = MemoryCache(4)
    cache = ResponseCache(CompletionSettings.default().cache, backend, clock=lambda: wall[0])
    await cache.set("k", {"v": 1}, None)
    wall[0] = 110.0
    assert await cache.get("k", 10) == {"v": 1} and await cache.get("k") == {"v": 1}
    assert await cache.get("k", 9.5) is None  # stored 10 s ago: too old for this caller
    await backend.set("old", b'{"id": "x", "choices": []}', None)  # a bare completion
    assert await cache.get("old") is None
    assert (cache.hits, cache.misses) == (2, 2)


def test_key_ignores_routing_keys_and_order() -> None:
    s = CompletionSettings.default().cache
    cache = ResponseCache(s, MemoryCache(4))
    a = cache.key("m", {"messages": [{"role": "user", "content": "x"}], "temperature": 0}, None)
    b = cache.key("m", {"temperature": 0, "user": "u", "messages": [
        {"content": "x", "role": "user"}]}, None)
    assert a == b and a.startswith("scillm:completion:default:")
    assert cache.key("m", {"temperature": 1}, None) != cache.key("m", {"temperature": 0}, None)
    assert cache.key("m", {}, "ns").startswith("scillm:completion:ns:")
    assert cache.key("m", {}, None, stream=True).startswith("scillm:completion-stream:")


def test_assemble() -> None:
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "h"},
                                    "finish_reason": None}]},
              {**base, "choices": [{"index": 0, "delta": {"content": "i", "tool_calls": [
                  {"index": 0, "id": "t", "function": {"name": "f", "arguments": "{}"}}]},
                  "finish_reason": "tool_calls"}]}]
    whole = assemble(chunks, None)
    message = whole["choices"][0]["message"]
    assert message["content"] == "hi" and message["tool_calls"][0]["function"]["name"] == "f"
    assert whole["choices"][0]["finish_reason"] == "tool_calls"


async def test_the_cache_is_off_unless_configured(upstream: Upstream,
                                                  make_engine: EngineFactory) -> None:
    """As in LiteLLM: no `litellm_settings.cache`, no cache, whatever a request asks."""
    assert CompletionSettings.default().cache.enabled is False
    assert CompletionSettings.from_mapping({"model_list": [{"model_name": "a"}]}
                                           ).cache.enabled is False
    engine = CompletionEngine(CompletionSettings.from_mapping(upstream_config(upstream)))
    await engine.start()
    try:
        for opts in ({}, {"enabled": True}):
            done = await engine.complete({"model": "m", "messages": MSG,
                                          "scillm": {"cache": opts}})
            assert not done.cache_hit and not done.cache_lookup
        assert upstream.calls("up") == 2 and engine.cache_stats() is None
    finally:
        await engine.close()


async def test_a_stream_is_answered_only_by_a_stream(upstream: Upstream,
                                                     make_engine: EngineFactory) -> None:
    """A unary reply never comes back as a stream of one chunk: a stream after the same
    unary request goes upstream, and a stream after a stream replays its chunks as they
    came."""
    upstream.plan("up", reply("one"), reply("two words here"), reply("three"))
    engine = await make_engine(upstream_config(upstream, cache=True))
    assert text_of(await engine.complete({"model": "m", "messages": MSG})) == "one"
    first, end = await streamed(engine, {"model": "m", "messages": MSG})
    assert not end.cache_hit and end.cache_lookup
    contents = [c["choices"][0]["delta"].get("content") for c in first if c["choices"]]
    assert contents == ["", "two", " words", " here", None]
    again, end = await streamed(engine, {"model": "m", "messages": MSG})
    assert end.cache_hit and again == first and end.usage == {
        "prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    done = await engine.complete({"model": "m", "messages": MSG})
    assert done.cache_hit and text_of(done) == "one"
    assert upstream.calls("up") == 2
    stats = engine.cache_stats()
    assert stats is not None and (stats.hits, stats.misses, stats.stores) == (2, 2, 2)


async def test_per_request_controls(upstream: Upstream, make_engine: EngineFactory) -> None:
    upstream.plan("up", *(reply(f"r{i}") for i in range(1, 8)))
    engine = await make_engine(upstream_config(upstream, cache=True))

    async def ask(**cache: Any) -> tuple[str, bool]:
        done = await engine.complete({"model": "m", "messages": MSG,
                                      "scillm": {"cache": cache}})
        return text_of(done), done.cache_hit

    assert await ask(no_store=True) == ("r1", False)
    assert await ask() == ("r2", False)
    assert await ask(max_age_s=3600) == ("r2", True)
    assert await ask(bypass=True) == ("r3", False)  # no lookup, but stored
    assert await ask() == ("r3", True)
    assert await ask(bypass=True, no_store=True) == ("r4", False)
    assert await ask(enabled=False) == ("r5", False)  # the cache left out entirely
    assert await ask(namespace="n2") == ("r6", False)
    assert await ask() == ("r3", True)
    assert await ask(namespace="n2") == ("r6", True)


async def test_default_off_mode_caches_only_opted_in_calls(upstream: Upstream,
                                                           make_engine: EngineFactory) -> None:
    upstream.plan("up", *(reply(f"r{i}") for i in range(1, 8)))
    engine = await make_engine(upstream_config(upstream, cache=True,
                                               cache_params={"mode": "default_off"}))
    plain = {"model": "m", "messages": MSG}
    opted = {**plain, "scillm": {"cache": {"enabled": True}}}
    assert text_of(await engine.complete(plain)) == "r1"
    assert text_of(await engine.complete(opted)) == "r2"
    assert text_of(await engine.complete(plain)) == "r3"
    done = await engine.complete(opted)
    assert done.cache_hit and text_of(done) == "r2"
    with pytest.raises(InvalidRequest, match="mode"):
        CompletionSettings.from_mapping({**upstream_config(upstream, cache=True,
                                                           cache_params={"mode": "sometimes"})})


async def test_redis_cache_end_to_end(redis_port: int, upstream: Upstream,
                                      make_engine: EngineFactory) -> None:
    cfg = {"model_list": [{"model_name": "gpt", "litellm_params": {
        "model": "openai/a", "api_base": upstream.url}}],
        "litellm_settings": {"cache": True, "cache_params": {
            "type": "redis", "host": "127.0.0.1", "port": redis_port, "ttl": 30,
            "namespace": f"t{upstream.url[-5:]}"}}}
    engine = await make_engine(cfg)
    request = {"model": "gpt", "messages": [{"role": "user", "content": "cache me"}]}
    first, end = await streamed(engine, request)
    assert not end.cache_hit
    replayed, end = await streamed(engine, request)
    assert end.cache_hit and replayed == first
    once = await engine.complete(request)
    again = await engine.complete(request)
    assert not once.cache_hit and again.cache_hit
    assert text_of(again) == "cache me"
    assert upstream.calls("a") == 2
    stats = engine.cache_stats()
    assert stats is not None and stats.backend == "redis" and stats.hits == 2


async def test_through_the_openai_door(tmp_path: Path, upstream: Upstream) -> None:
    """The real openai SDK against meshes: without `cache: true` every call goes upstream
    (even one asking `caching: true`); with it, LiteLLM's per-request controls work, and
    a stream after the same unary call is streamed, not the unary reply in one chunk."""
    upstream.plan("up", *(reply(text) for text in (
        "one", "two words here", "three", "four", "five", "six", "seven")))
    upstream.plan("plain", reply("p1"), reply("p2"), reply("p3"))
    meshes = []
    for name, extra in (("cached", {"cache": True}), ("plain", {})):
        config = tmp_path / f"{name}.yaml"
        model = "up" if extra else "plain"
        config.write_text(json.dumps({"model_list": [{"model_name": "m", "litellm_params": {
            "model": f"openai/{model}", "api_base": f"{upstream.url}/v1", "api_key": "x"}}],
            "litellm_settings": extra}))
        (tmp_path / name).mkdir()
        meshes.append(start_mesh(mesh_settings(tmp_path / name, config_path=config,
                                               services=("completion",))))
    cached, plain = meshes
    try:
        async def ask(mesh: RunningMesh, **extra: Any) -> str:
            sdk = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x",
                                     max_retries=0)
            async with sdk:
                reply_ = await sdk.chat.completions.create(model="m", messages=MSG,
                                                           extra_body=extra or None)
            return str(reply_.choices[0].message.content)

        async def stream(mesh: RunningMesh) -> list[str]:
            sdk = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x",
                                     max_retries=0)
            async with sdk:
                chunks = await sdk.chat.completions.create(model="m", messages=MSG,
                                                           stream=True)
                return [c.choices[0].delta.content or "" async for c in chunks if c.choices]

        assert [await ask(plain), await ask(plain, caching=True), await ask(plain)] == [
            "p1", "p2", "p3"]
        assert await ask(cached) == "one"
        assert await ask(cached) == "one"
        first = await stream(cached)
        assert "".join(first) == "two words here" and len([c for c in first if c]) == 3
        assert await stream(cached) == first  # replayed chunk by chunk
        assert await ask(cached, cache={"no-cache": True}) == "three"  # looked past, stored
        assert await ask(cached) == "three"
        assert await ask(cached, cache={"no-cache": True, "no-store": True}) == "four"
        assert await ask(cached, caching=False) == "five"
        assert await ask(cached, cache={"namespace": "other", "ttl": 600}) == "six"
        assert await ask(cached, cache={"s-maxage": 3600}) == "three"
        assert await ask(cached, cache={"namespace": "other"}) == "six"
        with pytest.raises(openai.BadRequestError, match="no-cahce"):
            await ask(cached, cache={"no-cahce": True})
        assert upstream.calls("up") == 6
        async with httpx.AsyncClient() as client:
            metrics = (await client.get(f"{cached.http_url}/metrics")).text
        # 12 calls: 5 lookups hit and 3 missed; no-cache (twice) and caching: false look
        # up nothing, and the refused request never reached the cache.
        assert 'scillm_cache_events_total{result="hit"} 5.0' in metrics
        assert 'scillm_cache_events_total{result="miss"} 3.0' in metrics
    finally:
        for mesh in meshes:
            mesh.stop()


def _created(value: object) -> Action:
    """A 200 whose `created` is `value` (the rest of the reply well formed)."""
    async def act(up: Upstream, req: dict[str, Any], reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter) -> bool:
        send_json(writer, 200, {**openai_reply(req), "created": value})
        return True
    return act


async def test_a_reply_the_mesh_refuses_is_not_cached(tmp_path: Path, upstream: Upstream,
                                                      ) -> None:
    """A reply of another shape is a 502, and it stays out of the cache: before, it was
    stored before the servicer refused it, so every identical call was answered 502 from
    the cache until the entry expired, although the upstream answered well again."""
    upstream.plan("up", _created("yesterday"), _created(1))
    config = tmp_path / "models.yaml"
    config.write_text(json.dumps(upstream_config(upstream, cache=True)))
    mesh = start_mesh(mesh_settings(tmp_path, config_path=config, services=("completion",)))
    try:
        sdk = openai.AsyncOpenAI(base_url=f"{mesh.http_url}/v1", api_key="x", max_retries=0)
        async with sdk:
            with pytest.raises(openai.APIStatusError, match="does not fit") as refused:
                await sdk.chat.completions.create(model="m", messages=MSG)  # type: ignore
            assert refused.value.status_code == 502
            answer = await sdk.chat.completions.create(model="m", messages=MSG)  # type: ignore
            assert answer.choices[0].message.content == "q" and answer.created == 1
            assert upstream.calls("up") == 2
            again = await sdk.chat.completions.create(model="m", messages=MSG)  # type: ignore
            assert again.created == 1 and upstream.calls("up") == 2  # the good one is cached
    finally:
        mesh.stop()


def test_assemble_passes_over_parts_of_another_shape() -> None:
    """Chunks are the upstream's: a tool call "at index 10**9" grew a list to a billion
    entries, and a content that is a number raised TypeError (an INTERNAL error)."""
    base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": 5, "tool_calls": [
            {"index": 10**9, "function": {"name": "f"}}, {"index": "a"}, None,
            {"index": 0, "id": "t", "function": {"name": "g", "arguments": 7}}]}}]},
        {**base, "choices": [None, {"index": 10**9}, {"index": 0, "delta": "x",
                                                      "finish_reason": "stop"}]},
    ]
    whole = assemble(chunks, None)
    (choice,) = whole["choices"]
    assert choice["message"]["content"] == "ok" and choice["finish_reason"] == "stop"
    assert choice["message"]["tool_calls"] == [
        {"id": "t", "type": "function", "function": {"name": "g", "arguments": ""}}]


def test_json_validity_of_a_reply_of_another_shape_is_false() -> None:
    from scillm.server.completion._output import json_validity

    fmt = {"type": "json_object"}
    for answer in ({"choices": [None]}, {"choices": [{"message": "x"}]}, {"choices": "x"}):
        assert json_validity(answer, fmt) is False
    assert json_validity({"choices": [{"message": {"content": "{}"}}]}, fmt) is True


async def test_memory_cache_holds_at_most_its_bytes() -> None:
    """The in-memory cache was bounded by entries only (1,024): answers of a few MB each
    (128 choices of a long answer) held gigabytes. It is bounded by bytes too: the least
    recently used go first, and an answer larger than the whole bound is not stored."""
    cache = MemoryCache(100, max_bytes=1000)
    for i in range(5):
        await cache.set(f"k{i}", b"x" * 300, None)
    assert [await cache.get(f"k{i}") is not None for i in range(5)] == [
        False, False, True, True, True]
    await cache.get("k2")  # used: k3 is now the least recent
    await cache.set("big", b"y" * 2000, None)  # larger than the bound: not kept
    assert await cache.get("big") is None and await cache.get("k2") is not None
    await cache.set("k5", b"z" * 300, None)
    assert await cache.get("k3") is None and await cache.get("k2") is not None
    await cache.set("k2", b"w" * 10, None)  # replaced: its old size is given back
    await cache.set("k6", b"v" * 600, None)
    assert await cache.get("k2") == b"w" * 10 and await cache.get("k6") is not None


@pytest.mark.parametrize(("cache", "param"), [
    ({"namespace": "n" * 257}, "scillm.cache.namespace"),
    ({"namespace": "x\n" * 10}, "scillm.cache.namespace"),
    ({"ttl_s": 1e300}, "scillm.cache.ttl_s"),
])
async def test_cache_controls_a_store_can_keep(upstream: Upstream, make_engine: EngineFactory,
                                               cache: dict[str, object], param: str) -> None:
    """A namespace is part of every cache key the call makes: one of megabytes (any
    request's size) made every key that long, in memory or in Redis. A ttl of 1e300 s
    failed the answered call with Redis's "value is not an integer or out of range"."""
    engine = await make_engine(upstream_config(upstream, cache=True))
    with pytest.raises(InvalidRequest) as info:
        await engine.complete({"model": "m", "messages": MSG, "scillm": {"cache": cache}})
    assert info.value.param == param
    with pytest.raises(InvalidRequest) as configured:
        CompletionSettings.from_mapping(upstream_config(upstream, cache=True, cache_params={
            "ttl": 1e300}))
    assert configured.value.param == "litellm_settings.cache_params.ttl"
