"""A warm pool of prover workers, so a batch does not pay a prover start per item.

The pool's workers are shared fairly among the batches that want them (`server/fair.py`):
a freed worker goes to the waiting batch that holds the fewest, not to whoever asked first.
Before, one caller's batch of slow items (every item queued at once) kept both Coq workers
for its whole length, and another caller's one-line item waited 39 s behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, Protocol, TypeVar

from ..fair import FairGate, current_owner
from .errors import EngineClosed

__all__ = ["PoolWorker", "WorkerPool"]

class PoolWorker(Protocol):
    """What the pool needs of a worker."""

    @property
    def alive(self) -> bool: ...

    async def kill(self) -> None: ...


W = TypeVar("W", bound=PoolWorker)


class WorkerPool(Generic[W]):
    """Up to `size` workers, started on demand and reused.

    `lease()` hands out an idle worker (or starts one). A worker that died, or whose
    lease ended in an exception (timeout, cancellation), is killed and dropped; the
    next lease starts a replacement.
    """

    def __init__(self, factory: Callable[[], Awaitable[W]], size: int) -> None:
        if size < 1:
            raise ValueError("pool size must be at least 1")
        self._factory = factory
        self._size = size
        self._slots = FairGate(size)
        self._idle: list[W] = []
        self._live: set[W] = set()
        self._closed = False
        #: Workers started over the pool's life (replacements included).
        self.started = 0

    @property
    def size(self) -> int:
        return self._size

    @property
    def leased(self) -> int:
        """Workers leased right now."""
        return self._slots.held

    async def _start_worker(self) -> W:
        worker = await self._factory()
        self.started += 1
        self._live.add(worker)
        return worker

    async def prewarm(self) -> None:
        """Start workers until `size` are idle."""
        while len(self._idle) < self._size and not self._closed:
            self._idle.append(await self._start_worker())

    @contextlib.asynccontextmanager
    async def lease(self) -> AsyncIterator[W]:
        """A worker for the duration of the block."""
        if self._closed:
            raise EngineClosed("worker pool is closed")
        owner = current_owner()
        await self._slots.acquire(owner)
        try:
            worker: W | None = None
            while self._idle and worker is None:
                candidate = self._idle.pop()
                if candidate.alive:
                    worker = candidate
                else:
                    await self._discard(candidate)
            if worker is None:
                worker = await self._start_worker()
            try:
                yield worker
            except BaseException:
                await self._discard(worker)
                raise
            if worker.alive and not self._closed:
                self._idle.append(worker)
            else:
                await self._discard(worker)
        finally:
            self._slots.release(owner)

    async def _discard(self, worker: W) -> None:
        self._live.discard(worker)
        await worker.kill()

    async def close(self) -> None:
        """Kill every worker, idle or leased."""
        self._closed = True
        workers, self._live, self._idle = list(self._live), set(), []
        await asyncio.gather(*(w.kill() for w in workers), return_exceptions=True)
