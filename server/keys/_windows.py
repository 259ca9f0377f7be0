"""Per-key minute windows of requests and tokens: in memory, or in Redis so that every
replica of the mesh counts against the same limits.

While Redis is unreachable (`redis_outage.Outage`) the Redis windows count in this process
instead: each replica holds a key to its limits on its own, and what they counted there is
not carried back to Redis when it answers again. A caller is neither refused nor kept
waiting because Redis is down.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from ..redis_outage import Outage, client_options, unreachable

__all__ = ["WINDOW_S", "MemoryWindows", "RedisWindows", "Windows"]

#: The length of a rate window, seconds.
WINDOW_S = 60.0

class Windows(Protocol):
    """Counts of the last minute per (key, kind); kind is "requests" or "tokens"."""

    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        """The window's total and the time its oldest entry leaves the window."""

    async def add(self, key: str, kind: str, amount: int) -> None:
        """Add `amount` now."""

    async def take(self, key: str, kind: str, limit: int) -> float | None:
        """Add one now unless the window already holds `limit`, in one step (callers
        sharing the window cannot both take the last unit): None when added, else the
        seconds until the window's oldest entry leaves it."""


class MemoryWindows:
    """Windows of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, str], deque[tuple[float, int]]] = {}

    def _window(self, key: str, kind: str) -> deque[tuple[float, int]]:
        window = self._entries.setdefault((key, kind), deque())
        horizon = self._clock() - WINDOW_S
        while window and window[0][0] <= horizon:
            window.popleft()
        return window

    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        window = self._window(key, kind)
        leaves = window[0][0] + WINDOW_S - self._clock() if window else None
        return sum(n for _, n in window), leaves

    async def add(self, key: str, kind: str, amount: int) -> None:
        self._window(key, kind).append((self._clock(), amount))

    async def take(self, key: str, kind: str, limit: int) -> float | None:
        window = self._window(key, kind)  # no await between the count and the add
        if sum(n for _, n in window) >= limit:
            return window[0][0] + WINDOW_S - self._clock()
        window.append((self._clock(), 1))
        return None


#: `RedisWindows.take` as one Lua script, which Redis runs without interleaving: drop what
#: left the window, sum the amounts (members are "<id>:<amount>"), add when under the limit.
_TAKE = """
local now, span, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - span)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local total = 0
for i = 1, #entries, 2 do
  total = total + tonumber(string.match(entries[i], ':(%d+)$'))
end
if total >= limit then
  return {0, entries[2]}
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return {1, ''}
"""


class RedisWindows:
    """Windows in Redis sorted sets (`scillm:rate:<kind>:<key>`), shared by replicas; in
    this process while Redis is unreachable (see the module)."""

    def __init__(self, url: str, *, outage: Outage | None = None) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, **client_options())
        self._take: Any = self._redis.register_script(_TAKE)
        self._unreachable = unreachable()
        self.outage = outage or Outage("the keys' rate windows")
        self._local = MemoryWindows()

    @staticmethod
    def _name(key: str, kind: str) -> str:
        return f"scillm:rate:{kind}:{key}"

    # Each in Redis, or in this process while Redis is unreachable.
    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        return await self.outage.call(lambda: self._total(key, kind), self._unreachable,
                                      lambda: self._local.total(key, kind))

    async def add(self, key: str, kind: str, amount: int) -> None:
        await self.outage.call(lambda: self._add(key, kind, amount), self._unreachable,
                               lambda: self._local.add(key, kind, amount))

    async def take(self, key: str, kind: str, limit: int) -> float | None:
        return await self.outage.call(lambda: self._take_one(key, kind, limit),
                                      self._unreachable,
                                      lambda: self._local.take(key, kind, limit))

    async def _total(self, key: str, kind: str) -> tuple[int, float | None]:
        now = time.time()
        name = self._name(key, kind)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now - WINDOW_S)
            pipe.zrange(name, 0, -1, withscores=True)
            _, entries = await pipe.execute()
        total = sum(int(member.rsplit(b":", 1)[1]) for member, _ in entries)
        leaves = entries[0][1] + WINDOW_S - now if entries else None
        return total, leaves

    async def _add(self, key: str, kind: str, amount: int) -> None:
        now = time.time()
        name = self._name(key, kind)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(name, {f"{uuid.uuid4().hex}:{amount}": now})
            pipe.expire(name, int(WINDOW_S * 2))
            await pipe.execute()

    async def _take_one(self, key: str, kind: str, limit: int) -> float | None:
        now = time.time()
        added, oldest = await self._take(
            keys=[self._name(key, kind)],
            args=[now, WINDOW_S, limit, f"{uuid.uuid4().hex}:1", int(WINDOW_S * 2)])
        return None if added else float(oldest) + WINDOW_S - now

    async def close(self) -> None:
        await self._redis.aclose()
