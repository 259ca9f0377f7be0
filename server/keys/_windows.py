"""Per-key minute windows of requests and tokens: in memory, or in Redis so that every
replica of the mesh counts against the same limits."""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["WINDOW_S", "MemoryWindows", "RedisWindows", "Windows"]

#: The length of a rate window, seconds.
WINDOW_S = 60.0


class Windows(Protocol):
    """Counts of the last minute per (key, kind); kind is "requests" or "tokens"."""

    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        """The window's total and the time its oldest entry leaves the window."""

    async def add(self, key: str, kind: str, amount: int) -> None:
        """Add `amount` now."""


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


class RedisWindows:
    """Windows in Redis sorted sets (`scillm:rate:<kind>:<key>`), shared by replicas."""

    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self._redis: Any = redis.Redis.from_url(url)

    @staticmethod
    def _name(key: str, kind: str) -> str:
        return f"scillm:rate:{kind}:{key}"

    async def total(self, key: str, kind: str) -> tuple[int, float | None]:
        now = time.time()
        name = self._name(key, kind)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zremrangebyscore(name, "-inf", now - WINDOW_S)
            pipe.zrange(name, 0, -1, withscores=True)
            _, entries = await pipe.execute()
        total = sum(int(member.rsplit(b":", 1)[1]) for member, _ in entries)
        leaves = entries[0][1] + WINDOW_S - now if entries else None
        return total, leaves

    async def add(self, key: str, kind: str, amount: int) -> None:
        now = time.time()
        name = self._name(key, kind)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(name, {f"{uuid.uuid4().hex}:{amount}": now})
            pipe.expire(name, int(WINDOW_S * 2))
            await pipe.execute()

    async def close(self) -> None:
        await self._redis.aclose()
