"""Exact-match response cache: an in-memory LRU, or Redis when configured.

The key is the sha256 of the request as sent upstream (sorted keys, JSON), plus the
model name and a namespace; routing-only keys (`scillm`, `stream`, `stream_options`,
`user`, `metadata`) never reach it. Values are `chat.completion` objects; a stream is
stored assembled and replayed as chunks.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

from ._settings import CacheSettings
from ._types import CacheStats

__all__ = ["CacheBackend", "MemoryCache", "RedisCache", "ResponseCache", "assemble", "replay"]

_NOT_KEYED = frozenset({"user", "metadata"})


class CacheBackend(Protocol):
    """Where cached responses live."""

    name: str

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None: ...
    async def close(self) -> None: ...


class MemoryCache:
    """A bounded LRU with optional per-entry expiry."""

    name = "memory"

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._data: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()
        self._max = max(1, max_entries)
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires is not None and expires <= self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._data[key] = (expires, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Redis through `redis.asyncio` (the `scillm[redis]` extra); connects lazily."""

    name = "redis"

    def __init__(self, settings: CacheSettings) -> None:
        from redis.asyncio import Redis  # the optional extra; imported only when configured

        password = settings.redis_password.value if settings.redis_password else None
        self._client = Redis(host=settings.redis_host or "127.0.0.1", port=settings.redis_port,
                             password=password)

    async def get(self, key: str) -> bytes | None:
        value = await self._client.get(key)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        if ttl_s is None:
            await self._client.set(key, value)
        else:
            await self._client.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def close(self) -> None:
        await self._client.aclose()


class ResponseCache:
    """Keys, (de)serialises and counts; the backend only stores bytes."""

    def __init__(self, settings: CacheSettings, backend: CacheBackend) -> None:
        self._settings = settings
        self._backend = backend
        self.hits = self.misses = self.stores = 0

    def key(self, model: str, body: dict[str, Any], namespace: str | None) -> str:
        keyed = {k: v for k, v in body.items() if k not in _NOT_KEYED}
        raw = json.dumps([model, keyed], sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False, default=str)
        digest = hashlib.sha256(raw.encode()).hexdigest()
        return f"scillm:completion:{namespace or self._settings.namespace}:{digest}"

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self._backend.get(key)
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        value: dict[str, Any] = json.loads(raw)
        return value

    async def set(self, key: str, response: dict[str, Any], ttl_s: float | None) -> None:
        ttl = ttl_s if ttl_s is not None else self._settings.ttl_s
        await self._backend.set(key, json.dumps(response, separators=(",", ":")).encode(), ttl)
        self.stores += 1

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.stores, self._backend.name)

    async def close(self) -> None:
        await self._backend.close()


def replay(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A `chat.completion` as chunks: role, content, tool calls, then finish, per choice."""
    base = {"id": response.get("id", ""), "object": "chat.completion.chunk",
            "created": response.get("created", 0), "model": response.get("model", "")}
    chunks: list[dict[str, Any]] = []
    for choice in response.get("choices") or ():
        index, message = choice.get("index", 0), choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"),
                                 "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call}
                                   for i, call in enumerate(message["tool_calls"])]
        chunks.append({**base, "choices": [{"index": index, "delta": delta,
                                            "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": index, "delta": {},
                                            "finish_reason": choice.get("finish_reason")}]})
    return chunks


def assemble(chunks: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """Fold streamed chunks into one `chat.completion` (content, tool calls, finish)."""
    choices: dict[int, dict[str, Any]] = {}
    first = chunks[0] if chunks else {}
    for chunk in chunks:
        for c in chunk.get("choices") or ():
            slot = choices.setdefault(c.get("index", 0), {
                "index": c.get("index", 0), "finish_reason": None, "logprobs": None,
                "message": {"role": "assistant", "content": None}})
            delta, message = c.get("delta") or {}, slot["message"]
            if delta.get("content") is not None:
                message["content"] = (message["content"] or "") + delta["content"]
            for call in delta.get("tool_calls") or ():
                calls = message.setdefault("tool_calls", [])
                i = call.get("index", len(calls))
                while len(calls) <= i:
                    calls.append({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}})
                target, fn = calls[i], call.get("function") or {}
                target["id"] = call.get("id") or target["id"]
                target["function"]["name"] += fn.get("name") or ""
                target["function"]["arguments"] += fn.get("arguments") or ""
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
    return {"id": first.get("id", ""), "object": "chat.completion",
            "created": first.get("created", 0), "model": first.get("model", ""),
            "choices": [choices[i] for i in sorted(choices)], "usage": usage}
