"""The response cache: LRU, TTL, keys, and a real redis-server."""

from __future__ import annotations

from typing import Any

from completion_upstream import EngineFactory, Upstream

from scillm.server.completion import CompletionSettings, StreamChunk, StreamEnd
from scillm.server.completion._cache import MemoryCache, ResponseCache, assemble, replay


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


def test_key_ignores_routing_keys_and_order() -> None:
    s = CompletionSettings.default().cache
    cache = ResponseCache(s, MemoryCache(4))
    a = cache.key("m", {"messages": [{"role": "user", "content": "x"}], "temperature": 0}, None)
    b = cache.key("m", {"temperature": 0, "user": "u", "messages": [
        {"content": "x", "role": "user"}]}, None)
    assert a == b and a.startswith("scillm:completion:default:")
    assert cache.key("m", {"temperature": 1}, None) != cache.key("m", {"temperature": 0}, None)
    assert cache.key("m", {}, "ns").startswith("scillm:completion:ns:")


def test_replay_and_assemble_round_trip() -> None:
    call = {"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    message = {"role": "assistant", "content": "hi", "tool_calls": [call]}
    response: dict[str, Any] = {"id": "x", "created": 1, "model": "m", "usage": None,
                                "choices": [{"index": 0, "finish_reason": "tool_calls",
                                             "message": message}]}
    back = assemble(replay(response), None)
    assert back["choices"][0]["message"] == {**response["choices"][0]["message"]}
    assert back["choices"][0]["finish_reason"] == "tool_calls"


async def test_redis_cache_end_to_end(redis_port: int, upstream: Upstream,
                                      make_engine: EngineFactory) -> None:
    cfg = {"model_list": [{"model_name": "gpt", "litellm_params": {
        "model": "openai/a", "api_base": upstream.url}}],
        "litellm_settings": {"cache": True, "cache_params": {
            "type": "redis", "host": "127.0.0.1", "port": redis_port, "ttl": 30,
            "namespace": f"t{upstream.url[-5:]}"}}}
    engine = await make_engine(cfg)
    request = {"model": "gpt", "messages": [{"role": "user", "content": "cache me"}]}
    first = [e async for e in engine.stream(request)]
    assert isinstance(first[-1], StreamEnd) and not first[-1].cache_hit
    again = await engine.complete(request)
    assert again.cache_hit and again.response["choices"][0]["message"]["content"] == "cache me"
    replayed = [e async for e in engine.stream(request)]
    assert isinstance(replayed[-1], StreamEnd) and replayed[-1].cache_hit
    assert any(isinstance(e, StreamChunk) for e in replayed)
    assert upstream.calls("a") == 1
    stats = engine.cache_stats()
    assert stats is not None and stats.backend == "redis" and stats.hits == 2
