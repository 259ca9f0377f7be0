"""Per-key minute windows of requests and tokens: in memory, or in Redis so that every
replica of the mesh counts against the same limits.

A window counts by the second: what was added within one second of the clock is one
bucket, which leaves the window a minute after that second began (so it counts for 59 to
60 s). A request's work is then bounded by the minute's 60 buckets, whatever the traffic:
a sorted set of every request, summed on each one, took Redis 119 ms a request (blocking
it meanwhile) at 50,000 requests a minute.

While Redis is unreachable (`redis_outage.Outage`) the Redis windows count in this process
instead: each replica holds a key to its limits on its own, and what they counted there is
not carried back to Redis when it answers again. A caller is neither refused nor kept
waiting because Redis is down.
"""

from __future__ import annotations

import math
import time
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
    """Windows of one process: per (key, kind), a bucket per second of the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: Per (key, kind): [second, amount] buckets, oldest first, at most one a second.
        self._entries: dict[tuple[str, str], deque[list[int]]] = {}

    def _window(self, key: str, kind: str, now: float) -> deque[list[int]]:
        window = self._entries.setdefault((key, kind), deque())
        horizon = now - WINDOW_S
        while window and window[0][0] <= horizon:
            window.popleft()
        return window

    @staticmethod
    def _leaves(window: deque[list[int]], now: float) -> float | None:
        return window[0][0] + WINDOW_S - now if window else None

    @staticmethod
    def _add(window: deque[list[int]], now: float, amount: int) -> None:
        second = math.floor(now)
        if window and window[-1][0] >= second:  # this second's bucket (or a later one)
            window[-1][1] += amount
        else:
            window.append([second, amount])

    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        now = self._clock()
        window = self._window(key, kind, now)
        return sum(n for _, n in window), self._leaves(window, now)

    async def add(self, key: str, kind: str, amount: int) -> None:
        now = self._clock()
        self._add(self._window(key, kind, now), now, amount)

    async def take(self, key: str, kind: str, limit: int) -> float | None:
        now = self._clock()
        window = self._window(key, kind, now)  # no await between the count and the add
        if sum(n for _, n in window) >= limit:
            return self._leaves(window, now)
        self._add(window, now, 1)
        return None


#: One use of a window in Redis, as one Lua script, which Redis runs without interleaving.
#: KEYS[1] is a hash of buckets (a second -> the amount added in it); ARGV: now (seconds,
#: fractional), the window's span, the limit (negative: none), the amount to add (0: none)
#: and the key's time to live. It drops the buckets that left the window, sums the others,
#: and adds `amount` to this second's bucket unless that would reach past the limit. It
#: returns {added (0 or 1), the total after it, the oldest bucket's second or ""}. Its
#: work is bounded by the buckets of one span, however many requests they count.
_WINDOW = """
local now, span = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, amount = tonumber(ARGV[3]), tonumber(ARGV[4])
local buckets = redis.call('HGETALL', KEYS[1])
local total, oldest, gone = 0, nil, {}
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if second <= now - span then
    gone[#gone + 1] = buckets[i]
  else
    total = total + tonumber(buckets[i + 1])
    if oldest == nil or second < oldest then oldest = second end
  end
end
if #gone > 0 then
  redis.call('HDEL', KEYS[1], unpack(gone))
end
if limit >= 0 and total >= limit then
  return {0, total, oldest and string.format('%d', oldest) or ''}
end
if amount > 0 then
  local second = math.floor(now)
  redis.call('HINCRBY', KEYS[1], second, amount)
  redis.call('EXPIRE', KEYS[1], ARGV[5])
  total = total + amount
  if oldest == nil or second < oldest then oldest = second end
end
return {1, total, oldest and string.format('%d', oldest) or ''}
"""


class RedisWindows:
    """Windows in Redis hashes of a bucket per second (`scillm:rate-s:<kind>:<key>`),
    shared by replicas; in this process while Redis is unreachable (see the module)."""

    def __init__(self, url: str, *, outage: Outage | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url, **client_options())
        self._script: Any = self._redis.register_script(_WINDOW)
        self._clock = clock
        self._unreachable = unreachable()
        self.outage = outage or Outage("the keys' rate windows")
        self._local = MemoryWindows()

    @staticmethod
    def _name(key: str, kind: str) -> str:
        # Not the sorted sets' `scillm:rate:<kind>:<key>` of earlier versions: a replica
        # of one would find the other's type at its key (WRONGTYPE) during an upgrade.
        return f"scillm:rate-s:{kind}:{key}"

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

    async def _use(self, key: str, kind: str, limit: int,
                   amount: int) -> tuple[bool, int, float | None]:
        """Run `_WINDOW`: whether `amount` was added, the total, when the oldest leaves."""
        now = self._clock()
        added, total, oldest = await self._script(
            keys=[self._name(key, kind)],
            args=[repr(now), WINDOW_S, limit, amount, int(WINDOW_S * 2)])
        return bool(added), int(total), (float(oldest) + WINDOW_S - now if oldest else None)

    async def _total(self, key: str, kind: str) -> tuple[int, float | None]:
        _, total, leaves = await self._use(key, kind, -1, 0)
        return total, leaves

    async def _add(self, key: str, kind: str, amount: int) -> None:
        await self._use(key, kind, -1, amount)

    async def _take_one(self, key: str, kind: str, limit: int) -> float | None:
        added, _, leaves = await self._use(key, kind, limit, 1)
        return None if added else leaves

    async def close(self) -> None:
        await self._redis.aclose()
