"""Exact-match response cache: an in-memory LRU, or Redis when configured.

The key is the sha256 of the request as sent upstream (sorted keys, JSON), plus the
model name, a namespace, and whether the request streams; routing-only keys (`scillm`,
`stream_options`, `user`, `metadata`) never reach it. A non-streamed request is answered
only by an earlier non-streamed reply (a `chat.completion`), a streamed one only by an
earlier stream, replayed chunk by chunk as it first came: a stream is never answered by
a unary reply squeezed into one chunk. Entries carry the wall time they were stored at,
for a caller's `max_age`.

A Redis that stops answering is a miss, not a failure (`redis_outage.Outage`): the request
goes upstream and nothing is stored, and Redis is tried again every few seconds.

A hit is told to the call's charges (`charges.report_cache_hit`): an answer from the cache
costs nothing upstream, and a virtual key is charged nothing for it, as in LiteLLM.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol, TypeGuard

from ..charges import report_cache_hit
from ..redis_outage import Outage, client_options, unreachable
from ._settings import CacheSettings
from ._types import CacheStats

__all__ = ["CacheBackend", "MemoryCache", "RedisCache", "ResponseCache", "assemble"]

_NOT_KEYED = frozenset({"user", "metadata"})


class CacheBackend(Protocol):
    """Where cached responses live."""

    name: str
    #: The exceptions that mean the backend is unreachable: a miss, not a failure.
    unreachable: tuple[type[BaseException], ...]

    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None: ...
    async def close(self) -> None: ...


#: The in-memory cache's bound in bytes (keys and answers): bounded by entries only, answers
#: of a few MB each (128 choices of a long answer) held gigabytes.
MEMORY_CACHE_BYTES = 256 * 1024 * 1024


class MemoryCache:
    """An LRU bounded by entries and by bytes, with optional per-entry expiry; an entry
    larger than the byte bound is not stored."""

    name = "memory"
    unreachable: tuple[type[BaseException], ...] = ()

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic, *,
                 max_bytes: int = MEMORY_CACHE_BYTES) -> None:
        self._data: OrderedDict[str, tuple[float | None, bytes]] = OrderedDict()
        self._max = max(1, max_entries)
        self._max_bytes = max_bytes
        self._bytes = 0
        self._clock = clock

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        expires, value = item
        if expires is not None and expires <= self._clock():
            self._forget(key)
            return None
        self._data.move_to_end(key)
        return value

    async def set(self, key: str, value: bytes, ttl_s: float | None) -> None:
        size = len(key) + len(value)
        if key in self._data:
            self._forget(key)
        if size > self._max_bytes:
            return
        expires = None if ttl_s is None else self._clock() + ttl_s
        self._data[key] = (expires, value)
        self._bytes += size
        while len(self._data) > self._max or self._bytes > self._max_bytes:
            old, (_, dropped) = self._data.popitem(last=False)
            self._bytes -= len(old) + len(dropped)

    def _forget(self, key: str) -> None:
        _, value = self._data.pop(key)
        self._bytes -= len(key) + len(value)

    async def close(self) -> None:
        self._data.clear()
        self._bytes = 0


class RedisCache:
    """Redis through `redis.asyncio` (the `scillm[redis]` extra); connects lazily."""

    name = "redis"

    def __init__(self, settings: CacheSettings) -> None:
        from redis.asyncio import Redis  # the optional extra; imported only when configured

        password = settings.redis_password.value if settings.redis_password else None
        host = settings.redis_host or "127.0.0.1"
        self.unreachable = unreachable()
        self._client = Redis(host=host, port=settings.redis_port, password=password,
                             **client_options())

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
    """Keys, (de)serialises and counts; the backend only stores bytes.

    A stored value is `{"at": <wall time>, "value": ...}`: a `chat.completion`, or for a
    stream `{"chunks": [...], "usage": ...}`. `clock` gives the wall time (injectable).
    """

    def __init__(self, settings: CacheSettings, backend: CacheBackend,
                 clock: Callable[[], float] = time.time, *,
                 outage: Outage | None = None) -> None:
        self._settings = settings
        self._backend = backend
        self._clock = clock
        self.outage = outage or Outage(f"the response cache ({backend.name})")
        self.hits = self.misses = self.stores = 0

    def key(self, model: str, body: dict[str, Any], namespace: str | None, *,
            stream: bool = False) -> str:
        keyed = {k: v for k, v in body.items() if k not in _NOT_KEYED}
        raw = json.dumps([model, keyed], sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False, default=str)
        digest = hashlib.sha256(raw.encode()).hexdigest()
        kind = "completion-stream" if stream else "completion"
        return f"scillm:{kind}:{namespace or self._settings.namespace}:{digest}"

    async def get(self, key: str, max_age_s: float | None = None) -> dict[str, Any] | None:
        """The stored value, or None (a miss) when absent or older than `max_age_s`."""
        raw = await self.outage.call(lambda: self._backend.get(key), self._backend.unreachable,
                                     _nothing)
        entry = _entry(raw) if raw is not None else None
        if entry is None or (max_age_s is not None
                             and self._clock() - entry[0] > max_age_s):
            self.misses += 1
            return None
        self.hits += 1
        report_cache_hit()  # charged nothing to the caller's key
        return entry[1]

    async def set(self, key: str, value: dict[str, Any], ttl_s: float | None) -> None:
        ttl = ttl_s if ttl_s is not None else self._settings.ttl_s
        raw = json.dumps({"at": self._clock(), "value": value}, separators=(",", ":"))

        async def store() -> bool:
            await self._backend.set(key, raw.encode(), ttl)
            return True

        if await self.outage.call(store, self._backend.unreachable, _not_stored):
            self.stores += 1

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses, self.stores, self._backend.name)

    async def close(self) -> None:
        await self._backend.close()


async def _nothing() -> None:
    """A miss: the cache's backend was skipped or unreachable."""
    return None


async def _not_stored() -> bool:
    return False


def _entry(raw: bytes) -> tuple[float, dict[str, Any]] | None:
    """(stored at, value) of a stored entry; None for anything else (an older format)."""
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), dict):
        return None
    at = entry.get("at")
    return (float(at) if isinstance(at, int | float) else 0.0), entry["value"]


#: The largest choice or tool-call index `assemble` believes, plus one (n is at most 128).
_MAX_INDEX = 128


def _index(value: Any) -> TypeGuard[int]:
    return type(value) is int and 0 <= value < _MAX_INDEX


def assemble(chunks: list[dict[str, Any]], usage: dict[str, Any] | None) -> dict[str, Any]:
    """Fold streamed chunks into one `chat.completion` (content, tool calls, finish).

    The chunks are the upstream's: a part of another shape is passed over, and an index
    is believed only below `_MAX_INDEX` (a tool call "at index 10**9" would otherwise grow
    a list to it)."""
    choices: dict[int, dict[str, Any]] = {}
    first = chunks[0] if chunks else {}
    for chunk in chunks:
        for c in chunk.get("choices") or ():
            index = c.get("index", 0) if isinstance(c, dict) else None
            if not _index(index):
                continue
            slot = choices.setdefault(index, {
                "index": index, "finish_reason": None, "logprobs": None,
                "message": {"role": "assistant", "content": None}})
            delta, message = c.get("delta"), slot["message"]
            if not isinstance(delta, dict):
                delta = {}
            if isinstance(delta.get("content"), str):
                message["content"] = (message["content"] or "") + delta["content"]
            calls_in = delta.get("tool_calls")
            for call in calls_in if isinstance(calls_in, list) else ():
                calls = message.setdefault("tool_calls", [])
                i = call.get("index", len(calls)) if isinstance(call, dict) else None
                if not _index(i):
                    continue
                while len(calls) <= i:
                    calls.append({"id": "", "type": "function",
                                  "function": {"name": "", "arguments": ""}})
                target, fn = calls[i], call.get("function")
                fn = fn if isinstance(fn, dict) else {}
                target["id"] = call.get("id") if isinstance(call.get("id"), str) and \
                    call.get("id") else target["id"]
                for part in ("name", "arguments"):
                    if isinstance(fn.get(part), str):
                        target["function"][part] += fn[part]
            if c.get("finish_reason"):
                slot["finish_reason"] = c["finish_reason"]
    return {"id": first.get("id", ""), "object": "chat.completion",
            "created": first.get("created", 0), "model": first.get("model", ""),
            "choices": [choices[i] for i in sorted(choices)], "usage": usage}
